"""Bad input in every user format: a clear error naming the file and the line or id, or (skip
mode) a counted skip; never silently wrong data. Also the evaluation side of skip mode: every
readable expression exactly once, the unreadable items counted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from evf.datamodules import (
    CocoInstancesDataset,
    DataError,
    LabelMeDataset,
    MaskFolderDataset,
    ReferringJsonlDataset,
    SkippedItem,
)
from evf.datamodules.base import EvaluationCollate
from evf.encoders import build_preprocessor
from evf.io import ImageReadError
from evf.sam_backends import backend_image_spec

from .custom_fixtures import labelme_mask_shape, rle, write_coco_from_shapes, write_labelme_file, write_mask
from .fixtures import box_mask, picture, save_image

MASK = box_mask(20, 24, [(2, 3, 10, 12)])


def _jsonl(root: Path, lines: list) -> Path:
    save_image(root / "a.png", picture(20, 24, 0))
    save_image(root / "b.png", picture(20, 24, 1))
    path = root / "annotations.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = {"image": "a.png", "expressions": ["the box"], "mask": [[2, 3, 10, 3, 10, 12, 2, 12]]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"image": "a.png", "expressions": ["x"], ', "not valid JSON"),
        ({"image": "a.png", "mask": [[2, 3, 10, 3, 10, 12]]}, "missing field 'expressions'"),
        ({"image": "a.png", "expressions": [""], "mask": [[2, 3, 10, 3, 10, 12]]}, "not a non-empty string"),
        ({"image": "a.png", "expressions": ["x"]}, "missing field 'mask'"),
        (
            {"image": "a.png", "expressions": ["x"], "no_target": True, "mask": [[1, 1, 2, 2, 1, 2]]},
            "contradict",
        ),
        ({"image": "a.png", "expressions": ["x"], "mask": 5}, "'mask' must be"),
    ],
    ids=["json", "no expressions", "empty expression", "no mask", "no_target and mask", "mask type"],
)
def test_jsonl_record_errors_name_the_line(tmp_path: Path, line, message: str, caplog) -> None:
    path = _jsonl(tmp_path, [GOOD, line])
    with pytest.raises(DataError, match=rf"annotations\.jsonl:2: .*{message}"):
        ReferringJsonlDataset(tmp_path)
    with caplog.at_level(logging.WARNING):
        skipping = ReferringJsonlDataset(tmp_path, on_bad_sample="skip")
    assert skipping.skipped == 1 and len(skipping) == 1 and f"{path}:2" in caplog.text
    assert skipping.bad_records and f"{path}:2" in skipping.bad_records[0]


@pytest.mark.parametrize(
    ("mask", "error", "message"),
    [
        (
            [[2, 3, 40, 3, 40, 12]],
            DataError,
            r"annotations\.jsonl:1: polygon point \(40, 3\) lies outside the 20x24",
        ),
        (
            {"size": [21, 24], "counts": rle(MASK)["counts"]},
            DataError,
            r"a\.png is 20x24 .* RLE of .*:1 says 21x24",
        ),
        (rle(np.zeros((20, 24), bool)), DataError, r"annotations\.jsonl:1: the mask is empty"),
        ("missing.png", ImageReadError, "mask not found: .*missing.png"),
    ],
    ids=["polygon outside", "rle size", "empty mask", "missing mask image"],
)
def test_jsonl_mask_errors(tmp_path: Path, mask, error, message: str) -> None:
    _jsonl(tmp_path, [{"image": "a.png", "expressions": ["x"], "mask": mask}])
    with pytest.raises(error, match=message):
        ReferringJsonlDataset(tmp_path, max_expressions=None).sample(0, 0)


def test_jsonl_missing_image_and_mixed_splits(tmp_path: Path) -> None:
    _jsonl(tmp_path, [{**GOOD, "image": "nowhere.png", "split": "train"}, {**GOOD, "split": "val"}, GOOD])
    with pytest.raises(DataError, match=r"annotations\.jsonl:3: no 'split'"):
        ReferringJsonlDataset(tmp_path)
    dataset = ReferringJsonlDataset(tmp_path, on_bad_sample="skip")
    assert dataset.skipped == 1
    with pytest.raises(DataError, match="no record in split 'test'; the file has splits"):
        ReferringJsonlDataset(tmp_path, "test", on_bad_sample="skip")
    strict = ReferringJsonlDataset(tmp_path, "train", on_bad_sample="skip", max_expressions=None)
    item = strict.sample(0, 0)
    assert isinstance(item, SkippedItem) and "image not found" in item.reason and "nowhere.png" in item.reason


def _csv(root: Path, rows: list[str], mask: np.ndarray = MASK) -> None:
    save_image(root / "a.png", picture(20, 24, 0))
    write_mask(root / "m.png", mask)
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ["image,mask,expression", "a.png,m.png,the box", "a.png,m.png"],
            r"annotations\.csv:3: missing column 'expression'",
        ),
        (
            ["image,mask,expression", "a.png,m.png,the box", "a.png,,the box"],
            r"annotations\.csv:3: empty 'mask'",
        ),
        (["image,mask,expression", "a.png,m.png,x,y"], r"annotations\.csv:2: more cells"),
        (["image,expression", "a.png,x"], r"the header lacks column\(s\) \['mask'\]"),
    ],
    ids=["missing column", "empty cell", "extra cell", "header"],
)
def test_mask_folder_row_errors(tmp_path: Path, rows: list[str], message: str) -> None:
    _csv(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        MaskFolderDataset(tmp_path)


def test_mask_folder_mask_errors(tmp_path: Path) -> None:
    _csv(tmp_path, ["image,mask,expression", "a.png,m.png,the box"], mask=np.zeros((20, 24), bool))
    with pytest.raises(DataError, match=r"annotations\.csv:2: the mask is empty"):
        MaskFolderDataset(tmp_path, max_expressions=None).sample(0, 0)
    write_mask(tmp_path / "m.png", np.ones((10, 10), bool))
    with pytest.raises(DataError, match=r"a\.png is 20x24 .* but mask .*m\.png .*says 10x10"):
        MaskFolderDataset(tmp_path, max_expressions=None).sample(0, 0)


def test_coco_instances_bad_records(tmp_path: Path, caplog) -> None:
    path = write_coco_from_shapes(tmp_path, "val", 2)
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 404
    path.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"instances_val\.json annotations\[id=1\]: category_id 404 is not in categories"
    ):
        CocoInstancesDataset(tmp_path, "val")
    with caplog.at_level(logging.WARNING):
        dataset = CocoInstancesDataset(tmp_path, "val", on_bad_sample="skip", max_expressions=None)
    assert dataset.skipped == 1 and "category_id 404" in caplog.text
    data["annotations"][0]["category_id"] = 1
    data["annotations"][0]["segmentation"] = [[0, 0, 500, 0, 500, 9]]
    data["annotations"][1]["segmentation"] = {"size": [9, 9], "counts": "0"}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[id=1\]: polygon point \(500, 0\) lies outside"):
        CocoInstancesDataset(tmp_path, "val", max_expressions=None).sample(0, 0)
    data["annotations"][0]["segmentation"] = [[1, 1, 5, 1, 5, 5]]
    path.write_text(json.dumps(data))
    with pytest.raises(
        DataError, match=r"annotations\[id=2\]: RLE size \[9, 9\] differs from the image size"
    ):
        CocoInstancesDataset(tmp_path, "val", max_expressions=None).sample(0, 0)
    (tmp_path / "val" / data["images"][1]["file_name"]).unlink()
    with pytest.raises(ImageReadError, match="image not found"):
        CocoInstancesDataset(tmp_path, "val", max_expressions=None).sample(1, 0)


def test_labelme_bad_files(tmp_path: Path, caplog) -> None:
    image = picture(20, 24, 0)
    point = {"label": "x", "points": [[1, 1]], "shape_type": "point"}
    write_labelme_file(tmp_path, "a", image, [labelme_mask_shape("box", MASK), point])
    with pytest.raises(
        DataError, match=r"a\.json shapes\[1\]: shape_type 'point' has no area.*ignore_shape_types"
    ):
        LabelMeDataset(tmp_path)
    assert len(LabelMeDataset(tmp_path, ignore_shape_types=["point"])) == 1
    (tmp_path / "b.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        skipping = LabelMeDataset(tmp_path, ignore_shape_types=["point"], on_bad_sample="skip")
    assert skipping.skipped == 1 and "b.json is not valid JSON" in caplog.text
    (tmp_path / "b.json").unlink()
    cases = [
        (
            {"label": "p", "points": [[1, 1], [40, 1], [5, 5]], "shape_type": "polygon"},
            r"polygon point \(40, 1\) lies outside",
        ),
        ({"label": "p", "points": [[1, 1], [4, 1]], "shape_type": "polygon"}, "at least 3 points"),
        (
            {"label": "p", "points": [[1, 1], [4, 4]], "shape_type": "mask", "mask": "!!"},
            "cannot decode 'mask'",
        ),
        (
            {**labelme_mask_shape("p", MASK), "points": [[2, 3], [12, 11]]},
            "the mask is 9x8 but its corners span 9x11",
        ),
        (
            {"label": "p", "points": [[3, 3], [3, 3], [3, 3]], "shape_type": "polygon", "group_id": "g"},
            "group_id must be an integer",
        ),
    ]
    for shape, message in cases:
        write_labelme_file(tmp_path, "a", image, [shape])
        with pytest.raises(DataError, match=message):
            LabelMeDataset(tmp_path, max_expressions=None).sample(0, 0)
    write_labelme_file(tmp_path, "a", image, [labelme_mask_shape("box", MASK)], embed=True)
    data = json.loads((tmp_path / "a.json").read_text())
    data["imageData"] = data["imageData"][:40]
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ImageReadError, match=r"cannot read image .*a\.json imageData"):
        LabelMeDataset(tmp_path, max_expressions=None).sample(0, 0)


def test_evaluation_in_skip_mode_reads_every_readable_expression_once(tmp_path: Path, caplog) -> None:
    lines = [
        {**GOOD, "image": name, "expressions": [f"box {name}"]} for name in ("a.png", "gone.png", "b.png")
    ]
    _jsonl(tmp_path, lines)
    evaluation = ReferringJsonlDataset(tmp_path, on_bad_sample="skip", max_expressions=None)
    training = ReferringJsonlDataset(tmp_path, on_bad_sample="skip", max_expressions=3)
    with caplog.at_level(logging.WARNING):
        items = [evaluation.sample(i, 0) for i in range(3)]
    assert [type(i).__name__ for i in items] == ["Sample", "Sample", "SkippedItem"]  # sorted: a, b, gone
    assert items[2].image_id == "referring_jsonl/train#2" and "gone.png" in items[2].reason
    assert training.sample(2, 0).texts == ["box a.png"]  # training substitutes the next readable item
    collate = EvaluationCollate(_builder())
    batch = collate(items)
    assert batch.texts == ["box a.png", "box b.png"] and batch.num_images == 2
    assert batch.failures == [{"image": "referring_jsonl/train#2", "error": items[2].reason}]
    empty = collate([items[2]])
    assert empty.num_images == 0 and len(empty.failures) == 1


def _builder():
    from evf.batch import BatchBuilder

    return BatchBuilder(build_preprocessor("beit3_tiny"), backend_image_spec("sam_tiny"))
