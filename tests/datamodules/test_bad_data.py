"""Wrong or unusual data: converted correctly, or an error naming the file and the field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evf.datamodules import ADE20KDataset, BatchBuilder, DataError, PartImageNetDataset, ReferDataset, Sample
from evf.datamodules.common import read_image
from evf.encoders import build_preprocessor
from evf.io import ImageReadError
from evf.sam_backends import backend_image_spec

from .fixtures import (
    PARTIMAGENET_CATEGORIES,
    CocoImage,
    Ref,
    ReferImage,
    picture,
    write_ade20k,
    write_coco,
    write_refer,
)


def _refcoco(root: Path) -> list[ReferImage]:
    images = [ReferImage(20, 24, [Ref([(1, 1, 9, 9)], [f"thing {n}"], "train")]) for n in range(3)]
    write_refer(root, "refcoco", "unc", images)
    return images


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_missing_image_errors_or_is_skipped_deterministically(tmp_path: Path, caplog) -> None:
    images = _refcoco(tmp_path)
    missing = tmp_path / "images/mscoco/images/train2014" / images[1].file_name
    missing.unlink()
    before = _snapshot(tmp_path)
    with pytest.raises(ImageReadError, match=f"image not found: {missing}"):
        ReferDataset(tmp_path, "refcoco", "train").sample(1, 0)
    skipping = ReferDataset(tmp_path, "refcoco", "train", on_bad_sample="skip")
    with caplog.at_level(logging.WARNING):
        assert skipping.sample(1, 0).texts == ["thing 2"]  # the next valid index
        assert skipping.sample(1, 0).texts == ["thing 2"]
    assert skipping.skipped == 2
    assert (
        "skipped bad item 1" in caplog.text
        and "2 skipped so far" in caplog.text
        and str(missing) in caplog.text
    )
    assert _snapshot(tmp_path) == before, "nothing may be written into a dataset folder"


def test_truncated_image_is_a_clear_error(tmp_path: Path) -> None:
    images = _refcoco(tmp_path)
    path = tmp_path / "images/mscoco/images/train2014" / images[0].file_name
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=f"cannot read image {path}"):
        ReferDataset(tmp_path, "refcoco", "train").sample(0, 0)


def test_annotations_pointing_nowhere(tmp_path: Path, caplog) -> None:
    root = tmp_path / "PartImageNet"
    data = write_coco(
        root / "annotations/train/train.json",
        root / "images/train",
        [CocoImage("a.JPEG", 10, 10, [(0, [(0, 0, 5, 5)]), (1, [(5, 5, 9, 9)])])],
        PARTIMAGENET_CATEGORIES,
    )
    data["annotations"][0]["image_id"] = 77
    data["annotations"][1]["category_id"] = 404
    (root / "annotations/train/train.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"train\.json annotations\[id=10\]: image_id 77 is not in images"):
        PartImageNetDataset(root)
    with caplog.at_level(logging.WARNING):
        dataset = PartImageNetDataset(root, on_bad_sample="skip")
    assert dataset.skipped == 2 and "category_id 404 is not in categories" in caplog.text
    assert len(dataset) == 0


def test_refs_pointing_at_unknown_annotations(tmp_path: Path) -> None:
    _refcoco(tmp_path)
    instances = tmp_path / "refcoco/instances.json"
    data = json.loads(instances.read_text())
    data["annotations"] = data["annotations"][1:]
    instances.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"refs\(unc\)\.p ref_id=0: ann_id 100 is not in instances\.json annotations"
    ):
        ReferDataset(tmp_path, "refcoco", "train")
    assert len(ReferDataset(tmp_path, "refcoco", "train", on_bad_sample="skip")) == 2


@pytest.mark.parametrize("segmentation", [[], [[1.0, 1.0, 5.0, 5.0]]], ids=["empty", "two-point polygon"])
def test_zero_area_masks_are_errors(tmp_path: Path, segmentation: list) -> None:
    _refcoco(tmp_path)
    instances = tmp_path / "refcoco/instances.json"
    data = json.loads(instances.read_text())
    data["annotations"][0]["segmentation"] = segmentation
    instances.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json annotations\[id=100\]: segmentation has zero area"):
        ReferDataset(tmp_path, "refcoco", "train").sample(0, 0)


def test_image_modes_are_converted(tmp_path: Path) -> None:
    rgb = picture(12, 16, 0)
    cases = {
        "grey.jpg": Image.fromarray(rgb).convert("L"),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).convert("I;16"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        pixels = read_image(tmp_path / name, (12, 16), "test")
        assert pixels.shape == (12, 16, 3) and pixels.dtype == np.uint8, name
    assert np.abs(read_image(tmp_path / "rgba.png", (12, 16), "test").astype(int) - rgb).max() == 0
    assert np.abs(read_image(tmp_path / "cmyk.jpg", (12, 16), "test").astype(int) - rgb).mean() < 4


def test_exif_rotation_follows_the_annotation_frame(tmp_path: Path, caplog) -> None:
    stored = picture(10, 20, 1)  # stored 10 rows x 20 columns, EXIF says "rotate 90 degrees clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    shown = read_image(tmp_path / "rot.jpg", (20, 10), "label map")  # annotated as displayed
    assert np.abs(shown.astype(int) - np.rot90(stored, k=-1)).mean() < 3
    with caplog.at_level(logging.WARNING):
        raw = read_image(tmp_path / "rot.jpg", (10, 20), "instances.json images[id=1]")  # annotated as stored
    assert np.abs(raw.astype(int) - stored).mean() < 3 and "EXIF orientation ignored" in caplog.text
    with pytest.raises(
        DataError, match=r"rot\.jpg is 20x10 .* but instances\.json images\[id=1\] says 11x11"
    ):
        read_image(tmp_path / "rot.jpg", (11, 11), "instances.json images[id=1]")


def test_dataset_reads_cmyk_and_rotated_jpegs(tmp_path: Path) -> None:
    label = np.zeros((20, 10), dtype=np.uint8)
    label[2:8, 1:9] = 3
    data = write_ade20k(tmp_path, {"train": [label]})
    image = data / "images/training/ADE_train_00000001.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(picture(20, 10, 2), k=1)).convert("CMYK").save(image, exif=exif)
    sample = ADE20KDataset(data, "train", max_expressions=None).sample(0, 0)
    assert sample.image.shape == (20, 10, 3) and sample.texts == ["[semantic] sky"]
    assert np.abs(sample.image.astype(int) - picture(20, 10, 2)).mean() < 6  # upright again


def test_over_long_expressions_are_truncated_with_a_counted_warning(caplog) -> None:
    builder = BatchBuilder(build_preprocessor("beit3_tiny"), backend_image_spec("sam_tiny"))
    long = " ".join(["the red circle on the left"] * 40)
    sample = Sample(picture(16, 16, 0), np.zeros((2, 16, 16), bool), ["the red circle", long], "long")
    with caplog.at_level(logging.WARNING):
        batch = builder([sample])
    limit = builder.encoder.tokenizer.max_length
    assert batch.input_ids.shape == (2, limit) and batch.attention_mask[1].all()
    assert "truncated 1 of 2 expression(s)" in caplog.text
