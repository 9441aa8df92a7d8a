"""The on-disk store: round trip, corruption, resume, shards."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from evf.cache import CacheError, CacheMismatchError, EmbeddingStore, ShardWriter, pixel_hash
from evf.cache.builder import datamodule_datasets, plan_images, shard_of
from evf.cache.keys import cache_key
from evf.sam_backends import create_backend

from .conftest import build_store, shapes_dm


def _images():
    plan = plan_images(datamodule_datasets(shapes_dm()))
    return plan, [p.dataset.load_image(p.index) for p in plan]


def test_plan_covers_every_split_once():
    plan, _ = _images()
    assert len(plan) == 4 + 2 + 2  # train, val, test scenes are distinct pictures
    assert [p.key for p in plan] == sorted({p.key for p in plan})
    assert {tuple(p.key for p in shard_of(plan, i, 3)) for i in range(3)} == {
        tuple(p.key for p in plan[i::3]) for i in range(3)
    }


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_round_trip(dtype, sam_checkpoint, store_factory):
    store = EmbeddingStore(store_factory(dtype))
    backend = create_backend("sam_tiny", checkpoint=sam_checkpoint).eval()
    plan, images = _images()
    assert len(store) == len(plan)
    pixels = torch.stack([backend.info.image(im) for im in images])
    with torch.no_grad():
        expected = backend.encode_image(pixels)["image_embeddings"]
    got = torch.stack([store.read(pixel_hash(im))["image_embeddings"] for im in images])
    assert got.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    # fp32 is exact; the half formats are the fp32 features rounded once
    assert torch.equal(got, expected.to(got.dtype))


def test_truncated_data_file_is_refused(store_factory):
    root = store_factory()
    data = next(root.glob("*.image_embeddings.bin"))
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size - 100)
    with pytest.raises(CacheError, match="truncated") as err:
        EmbeddingStore(root)
    assert data.name in str(err.value)


def test_header_with_another_shape_is_refused(store_factory):
    root = store_factory()
    header_path = next(root.glob("shard-*.json"))
    header = json.loads(header_path.read_text())
    header["key"]["features"]["image_embeddings"] = [64, 8, 8]
    header_path.write_text(json.dumps(header))
    with pytest.raises(CacheError, match=r"image_embeddings \[64, 8, 8\]"):
        EmbeddingStore(root)


def test_index_pointing_outside_the_shard_is_refused(store_factory):
    root = store_factory()
    index = next(root.glob("*.index.jsonl"))
    with open(index, "a") as f:
        f.write(json.dumps({"row": 99, "image": "x", "hash": "y", "size": [1, 1]}) + "\n")
    with pytest.raises(CacheError, match="row 99 outside"):
        EmbeddingStore(root)


def test_unknown_image_is_a_clear_error(store_factory):
    store = EmbeddingStore(store_factory())
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(CacheError, match="image pic.png .* is not in the embedding cache"):
        store.read(pixel_hash(image), "pic.png")


def test_empty_directory_is_not_a_store(tmp_path):
    with pytest.raises(CacheError, match="evf cache-embeddings"):
        EmbeddingStore(tmp_path)


def test_resume_redoes_only_rows_not_flushed(sam_checkpoint, tmp_path):
    """A crash after two flushed rows and one written-but-unflushed row, with half an index line
    on disk: the rerun keeps the two, redoes the rest, and the store equals a one-go build."""
    backend = create_backend("sam_tiny", checkpoint=sam_checkpoint).eval()
    key = cache_key(backend, "sam_tiny")
    plan, images = _images()
    out = tmp_path / "crashed"
    writer = ShardWriter(out, key, "bf16", 0, 1, [p.key for p in plan])
    with torch.no_grad():
        features = backend.encode_image(torch.stack([backend.info.image(im) for im in images[:3]]))
    for row in range(3):
        image, row_features = images[row], {k: v[row] for k, v in features.items()}
        writer.write(row, row_features, plan[row].key, pixel_hash(image), image.shape[:2])
        if row == 1:
            writer.flush()
    del writer  # the "crash": row 2 is in the memory map but not in the index
    index = next(out.glob("*.index.jsonl"))
    with open(index, "a") as f:
        f.write('{"row": 2, "ima')
    assert build_store(sam_checkpoint, out) == (len(plan) - 2, 2)
    assert build_store(sam_checkpoint, out) == (0, len(plan))
    build_store(sam_checkpoint, tmp_path / "one_go")
    resumed, one_go = EmbeddingStore(out), EmbeddingStore(tmp_path / "one_go")
    assert resumed.rows == one_go.rows
    for hash_ in one_go.rows:
        assert torch.equal(resumed.read(hash_)["image_embeddings"], one_go.read(hash_)["image_embeddings"])


def test_resume_with_other_settings_is_refused(sam_checkpoint, store_factory):
    root = store_factory("bf16")
    with pytest.raises(CacheMismatchError, match="dtype: 'bf16' vs 'fp16'"):
        build_store(sam_checkpoint, root, "fp16")
    backend = create_backend("sam_tiny", checkpoint=sam_checkpoint)
    other = replace(cache_key(backend, "sam_tiny"), weights="0" * 64)
    with pytest.raises(CacheMismatchError, match="weights: "):
        build_store(sam_checkpoint, root, key=other)


def test_shards_written_apart_are_read_together(store_factory):
    root = store_factory(shard=0, num_shards=2)
    assert len(EmbeddingStore(root)) == 4
    store_factory(shard=1, num_shards=2)
    store = EmbeddingStore(root)
    _, images = _images()
    assert len(store) == 8 and all(pixel_hash(im) in store for im in images)


def test_shards_of_another_model_are_refused(sam_checkpoint, store_factory):
    root = store_factory(shard=0, num_shards=2)
    backend = create_backend("sam_tiny", checkpoint=sam_checkpoint)
    other = replace(cache_key(backend, "sam_tiny"), weights="0" * 64)
    build_store(sam_checkpoint, root, key=other, shard=1, num_shards=2)
    with pytest.raises(CacheMismatchError, match="another model"):
        EmbeddingStore(root)
