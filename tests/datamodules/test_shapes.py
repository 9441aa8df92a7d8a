"""Tests of the synthetic shapes dataset: scenes, expressions, REFER export and tokenizer asset."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image
from pycocotools import mask as coco_mask

from evf.assets import SHAPES_TOKENIZER
from evf.datamodules.shapes import (
    KINDS,
    SEMANTIC_PREFIX,
    ShapesDataset,
    expression_corpus,
    generate_scene,
    write_refer,
)
from evf.datamodules.shapes.__main__ import main as shapes_main
from evf.datamodules.shapes.scene import PALETTE

SHAPE_WORDS = ("circle", "square", "triangle")
DIRECTION_WORDS = {
    "leftmost": "left",
    "left": "left",
    "rightmost": "right",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
}
SIZE_WORDS = {
    "larger": ("large", True),
    "bigger": ("large", True),
    "largest": ("large", False),
    "biggest": ("large", False),
    "smaller": ("small", True),
    "smallest": ("small", False),
}


def _measure(masks: np.ndarray) -> tuple[list[tuple[float, float]], list[int]]:
    """Centroids ``(x, y)`` and areas of the masks, computed here rather than taken from the record."""
    centres = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        centres.append((xs.mean(), ys.mean()))
    return centres, [int(m.sum()) for m in masks]


def _extreme(i: int, group: list[int], direction: str, centres: list, width: int, height: int) -> bool:
    """Whether object ``i``'s centre lies beyond all others of ``group`` by 10% of the image extent."""
    axis, sign = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}[direction]
    margin = 0.1 * (width if axis == 0 else height)
    return all(sign * (centres[i][axis] - centres[j][axis]) >= margin for j in group if j != i)


def _resolve(text: str, colours: list[str], shapes: list[str], masks: np.ndarray) -> int:
    """The one object ``text`` can refer to, by an independent reading of its words."""
    words = text.split()
    height, width = masks.shape[1:]
    centres, areas = _measure(masks)
    colour = [w for w in words if w in PALETTE]
    shape = [w for w in words if w in SHAPE_WORDS]
    group = [
        i
        for i in range(len(masks))
        if (not colour or colours[i] == colour[0]) and (not shape or shapes[i] == shape[0])
    ]
    directions = {DIRECTION_WORDS[w] for w in words if w in DIRECTION_WORDS}
    sizes = [SIZE_WORDS[w] for w in words if w in SIZE_WORDS]
    if directions:
        assert len(group) >= 2, f"{text!r}: a position word within a group of {len(group)}"
        (direction,) = directions
        matches = [i for i in group if _extreme(i, group, direction, centres, width, height)]
    elif sizes:
        ((extreme, comparative),) = sizes
        assert comparative == (len(group) == 2), f"{text!r}: wrong degree for a group of {len(group)}"
        if extreme == "large":
            matches = [i for i in group if all(areas[i] >= 1.6 * areas[j] for j in group if j != i)]
        else:
            matches = [i for i in group if all(1.6 * areas[i] <= areas[j] for j in group if j != i)]
    else:
        matches = group
    assert len(matches) == 1, f"{text!r} fits objects {matches}"
    return matches[0]


def _kind_of(text: str) -> str:
    """The expression kind its words imply."""
    words = set(text.split())
    if words & set(DIRECTION_WORDS):
        return "position"
    if words & set(SIZE_WORDS):
        return "size"
    colour, shape = bool(words & set(PALETTE)), bool(words & set(SHAPE_WORDS))
    return "colour_shape" if colour and shape else "colour" if colour else "shape"


def test_same_index_gives_the_same_sample() -> None:
    for split, max_expressions in (("train", 3), ("val", None)):
        a = ShapesDataset(split, 8, seed=5, max_expressions=max_expressions)
        b = ShapesDataset(split, 8, seed=5, max_expressions=max_expressions)
        for idx in (0, 3, 7):
            x, y = a[idx], b[idx]
            np.testing.assert_array_equal(x.image, y.image)
            np.testing.assert_array_equal(x.masks, y.masks)
            assert (x.texts, x.kinds, x.image_id) == (y.texts, y.kinds, y.image_id)


def test_seed_changes_the_scenes() -> None:
    a, b = ShapesDataset("train", 3, seed=0), ShapesDataset("train", 3, seed=1)
    assert not any(np.array_equal(a.scene(i).masks, b.scene(i).masks) for i in range(3))


def test_epochs_change_the_picks_but_not_the_scene() -> None:
    dataset = ShapesDataset("train", 20, seed=0, max_expressions=3)
    first = [dataset[i] for i in range(20)]
    dataset.set_epoch(1)
    second = [dataset[i] for i in range(20)]
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
    assert any(x.texts != y.texts for x, y in zip(first, second, strict=True))
    assert [dataset[1, i].texts for i in range(20)] == [dataset.sample(i, 1).texts for i in range(20)]
    assert [dataset[0, i].texts for i in range(20)] == [x.texts for x in first]


def test_training_items_pick_distinct_objects_with_one_expression_each() -> None:
    dataset = ShapesDataset("train", 30, seed=0, max_expressions=3)
    for idx in range(30):
        sample, scene = dataset[idx], dataset.scene(idx)
        assert len(sample.texts) == min(3, len(scene.objects))
        chosen = [int(np.flatnonzero([np.array_equal(m, s) for s in scene.masks])[0]) for m in sample.masks]
        assert len(set(chosen)) == len(chosen)
        for i, text, kind in zip(chosen, sample.texts, sample.kinds, strict=True):
            assert (text, kind) in {(e.text, e.kind) for e in scene.objects[i].expressions}


def test_validation_items_hold_every_expression_of_every_object() -> None:
    dataset = ShapesDataset("val", 10, seed=0, max_expressions=None)
    for idx in range(10):
        sample, scene = dataset[idx], dataset.scene(idx)
        expected = [(i, e.text, e.kind) for i, obj in enumerate(scene.objects) for e in obj.expressions]
        assert list(zip(sample.texts, sample.kinds, strict=True)) == [(t, k) for _, t, k in expected]
        np.testing.assert_array_equal(sample.masks, scene.masks[[i for i, _, _ in expected]])


def test_masks_are_exactly_the_drawn_pixels() -> None:
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    sizes = set()
    for idx in range(60):
        scene = generate_scene(0, "train", idx)
        image, masks = scene.image, scene.masks
        sizes.add(image.shape[:2])
        assert 112 <= image.shape[0] <= 144 and 112 <= image.shape[1] <= 144
        assert 3 <= len(scene.objects) <= 5 and masks.dtype == bool
        assert masks.sum(axis=(1, 2)).min() > 0
        assert masks.sum(axis=0).max() == 1, "masks overlap"
        for obj, mask in zip(scene.objects, masks, strict=True):
            assert (image[mask] == obj.rgb).all()
            assert obj.area == mask.sum()
        distance = np.linalg.norm(image[:, :, None, :].astype(np.float64) - palette, axis=-1).min(axis=-1)
        np.testing.assert_array_equal(distance < 45, masks.any(axis=0))
    assert len({h / w for h, w in sizes}) > 10, "aspect ratios should vary"


def test_sizes_vary_enough_for_size_words() -> None:
    areas = [o.area for idx in range(60) for o in generate_scene(0, "train", idx).objects]
    assert np.percentile(areas, 90) >= 2.0 * np.percentile(areas, 10)


def test_every_expression_singles_out_its_object() -> None:
    corpus = set(expression_corpus())
    kinds_seen = set()
    for split in ("train", "val"):
        for idx in range(100):
            scene = generate_scene(0, split, idx)
            colours = [o.colour for o in scene.objects]
            shapes = [o.shape for o in scene.objects]
            for i, obj in enumerate(scene.objects):
                assert obj.expressions, f"object {i} of {split}/{idx} has no expression"
                for e in obj.expressions:
                    assert e.text in corpus
                    assert e.kind in KINDS and _kind_of(e.text) == e.kind, e
                    assert _resolve(e.text, colours, shapes, scene.masks) == i, e.text
                    kinds_seen.add(e.kind)
    assert kinds_seen == set(KINDS)


def test_splits_never_share_scenes() -> None:
    digests = {}
    for split in ("train", "val", "test"):
        dataset = ShapesDataset(split, 100, seed=0)
        digests[split] = {hashlib.sha1(dataset.scene(i).image.tobytes()).hexdigest() for i in range(100)}
        assert len(digests[split]) == 100
    assert not (digests["train"] & digests["val"] or digests["train"] & digests["test"])
    assert not digests["val"] & digests["test"]


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown shapes split"):
        ShapesDataset("testA", 3)  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="out of range"):
        ShapesDataset("train", 3)[3]
    with pytest.raises(RuntimeError, match=r"shapes scene train/0 \(seed 0\): no layout"):
        generate_scene(0, "train", 0, image_size=(20, 20), num_objects=(30, 30))


class _BuiltinsOnly(pickle.Unpickler):
    """Refuses every global but a few plain built-in types."""

    def find_class(self, module: str, name: str) -> type:
        if module == "builtins" and name in {"dict", "list", "str", "int", "float"}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def test_refer_export_reads_back(tmp_path: Path) -> None:
    counts = {"train": 4, "val": 2, "test": 2}
    data_dir = write_refer(tmp_path, counts, seed=0)
    assert data_dir == tmp_path / "shapes"
    raw = (data_dir / "refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02", "pickle protocol 2"
    refs = _BuiltinsOnly(io.BytesIO(raw)).load()
    instances = json.loads((data_dir / "instances.json").read_text())
    images = {img["id"]: img for img in instances["images"]}
    anns = {ann["id"]: ann for ann in instances["annotations"]}
    categories = {c["id"]: c["name"] for c in instances["categories"]}
    assert sorted(categories.values()) == sorted(SHAPE_WORDS)
    assert len(images) == sum(counts.values()) and len(refs) == len(anns)
    assert len({r["ref_id"] for r in refs}) == len(refs)
    assert len({s["sent_id"] for r in refs for s in r["sentences"]}) == sum(len(r["sentences"]) for r in refs)
    for split, count in counts.items():
        dataset = ShapesDataset(split, count, seed=0, max_expressions=None)
        for idx in range(count):
            scene = dataset.scene(idx)
            (image_id,) = [
                i for i, img in images.items() if img["file_name"] == f"shapes_{split}_{idx:06d}.png"
            ]
            info = images[image_id]
            assert (info["height"], info["width"]) == scene.image.shape[:2]
            pixels = np.asarray(Image.open(tmp_path / "images" / info["file_name"]).convert("RGB"))
            np.testing.assert_array_equal(pixels, scene.image)
            image_refs = [r for r in refs if r["image_id"] == image_id]
            assert len(image_refs) == len(scene.objects)
            for ref, obj, mask in zip(image_refs, scene.objects, scene.masks, strict=True):
                assert (
                    ref["split"] == split
                    and ref["file_name"] == f"shapes_{split}_{idx:06d}_{ref['ref_id']}.jpg"
                )
                assert [s["sent"] for s in ref["sentences"]] == [e.text for e in obj.expressions]
                assert all(
                    s["raw"] == s["sent"] and s["tokens"] == s["sent"].split() for s in ref["sentences"]
                )
                assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
                ann = anns[ref["ann_id"]]
                assert ann["image_id"] == image_id and ann["iscrowd"] == 0
                assert categories[ann["category_id"]] == obj.shape == categories[ref["category_id"]]
                assert ann["bbox"] == list(obj.bbox) and ann["area"] == obj.area
                rle = coco_mask.frPyObjects(ann["segmentation"], info["height"], info["width"])
                decoded = coco_mask.decode(rle).any(axis=-1)
                assert (decoded & mask).sum() / (decoded | mask).sum() >= 0.95


def test_command_line_writes_refer_and_tokenizer(tmp_path: Path) -> None:
    shapes_main(["--write-refer", str(tmp_path / "refer"), "--train", "2", "--val", "1", "--test", "1"])
    shapes_main(["--write-tokenizer", str(tmp_path / "shapes.model")])
    assert (tmp_path / "refer" / "shapes" / "refs(unc).p").is_file()
    assert len(list((tmp_path / "refer" / "images").glob("*.png"))) == 4
    assert (tmp_path / "shapes.model").read_bytes() == SHAPES_TOKENIZER.read_bytes(), (
        "the shipped tokenizer is stale: rebuild it with python -m evf.datamodules.shapes --write-tokenizer"
    )


def test_tokenizer_asset_covers_every_expression() -> None:
    processor = spm.SentencePieceProcessor(model_file=str(SHAPES_TOKENIZER))
    assert processor.get_piece_size() + 2 <= 512
    assert processor.encode(SEMANTIC_PREFIX, out_type=str)[-1] == SEMANTIC_PREFIX
    texts = set(expression_corpus())
    for idx in range(200):
        texts |= {e.text for o in generate_scene(0, "train", idx).objects for e in o.expressions}
    for text in sorted(texts) + [f"{SEMANTIC_PREFIX} the red circle"]:
        assert processor.unk_id() not in processor.encode(text), text
    words = {w for t in texts for w in t.split()}
    assert all(re.fullmatch(r"[a-z]+", w) for w in words) and len(words) <= 30
