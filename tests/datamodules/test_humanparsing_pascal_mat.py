"""Human parsing with an explicit label set (ATR, LIP, CIHP) in each release's layout, and
PASCAL-Part read from its raw per-image .mat files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evf.datamodules import DataError, DatasetSpec, HumanParsingDataset, PascalPartDataset, build_dataset
from evf.datamodules.parts import PascalPartMatDataset, pascal_category

from .custom_fixtures import write_cihp, write_lip, write_pascal_part_mat
from .fixtures import CocoImage, write_coco, write_humanparsing


def _label(values: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    label = np.zeros((30, 24), dtype=np.uint8)
    for value, (x0, y0, x1, y1) in values.items():
        label[y0:y1, x0:x1] = value
    return label


@pytest.mark.parametrize("doubled", [False, True], ids=["release", "zip folders doubled"])
def test_lip_layout_and_labels(tmp_path: Path, doubled: bool) -> None:
    label = _label({10: (2, 2, 20, 12), 14: (14, 12, 20, 20), 19: (2, 24, 8, 28)})
    write_lip(tmp_path, {"train": {"100_1": label}, "val": {"200_2": label}}, doubled=doubled)
    for split in ("train", "val"):
        sample = HumanParsingDataset(tmp_path, split, labels="lip", max_expressions=None).sample(0, 0)
        assert sample.texts == [
            "[semantic] background",
            "[semantic] jumpsuits",
            "[semantic] right arm",  # "Left-arm": the person's left, on the viewer's right
            "[semantic] left shoe",  # "Right-shoe"
        ]
        np.testing.assert_array_equal(sample.masks[3], label == 19)


def test_cihp_layout_and_its_own_label_10(tmp_path: Path) -> None:
    label = _label({10: (2, 2, 20, 12), 3: (14, 12, 20, 20)})
    data = write_cihp(tmp_path, {"train": {"0000006": label}, "val": {"0000001": label}})
    sample = HumanParsingDataset(data, "val", labels="cihp", max_expressions=None).sample(0, 0)
    assert sample.texts == ["[semantic] background", "[semantic] glove", "[semantic] torso skin"]
    assert sample.image_id == "humanparsing-cihp/val/0000001.jpg"


def test_a_label_set_mismatch_is_an_error_never_a_guess(tmp_path: Path) -> None:
    lip_label = _label({19: (2, 2, 10, 10)})
    atr = write_humanparsing(tmp_path / "atr", {"1_1": lip_label})  # ATR's layout, LIP's values
    with pytest.raises(DataError, match=r"1_1\.png: value 19 is not a class id of humanparsing-atr/train"):
        HumanParsingDataset(atr, max_expressions=None).sample(0, 0)
    cihp = write_cihp(tmp_path / "cihp", {"train": {"0000006": lip_label}})
    with pytest.raises(DataError, match=r"laid out for labels: cihp"):
        HumanParsingDataset(cihp)  # labels default to atr
    with pytest.raises(DataError, match=r"humanparsing \(lip\) label folder not found"):
        HumanParsingDataset(atr, labels="lip")
    with pytest.raises(ValueError, match="unknown human-parsing label set 'pascal'"):
        HumanParsingDataset(atr, labels="pascal")
    spec = DatasetSpec("humanparsing", str(cihp), "train", options={"labels": "cihp"})
    assert len(build_dataset(spec, seed=0, max_expressions=None)) == 1


def _box(y0: int, y1: int, x0: int, x1: int, shape=(24, 32)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_pascal_part_names() -> None:
    assert pascal_category("person", "llarm") == "person arm"
    assert pascal_category("person", "hair") == "person hair"
    assert pascal_category("person", "lebrow") is None
    assert pascal_category("dog", "lfpa") == "dog paw"
    assert pascal_category("car", "fliplate") == "car license plate"
    assert pascal_category("pottedplant", "pot") == "potted plant pot"
    assert pascal_category("boat", "hull") is None


def test_pascal_part_mat_matches_the_vlpart_json(tmp_path: Path) -> None:
    arm_l, arm_r, hair, pot = _box(2, 8, 1, 5), _box(2, 8, 20, 24), _box(0, 2, 8, 16), _box(14, 22, 2, 10)
    images = {
        "2008_000002": (
            24,
            32,
            [("person", [("llarm", arm_l), ("rlarm", arm_r), ("hair", hair), ("lebrow", hair)])],
        ),
        "2008_000003": (24, 32, [("pottedplant", [("pot", pot)]), ("chair", [])]),
        "2008_000004": (24, 32, [("boat", [])]),  # no part of the 93 categories: left out, as VLPart does
    }
    write_pascal_part_mat(tmp_path, images, "val")
    dataset = PascalPartMatDataset(tmp_path, "val", max_expressions=None)
    assert len(dataset) == 2
    first = dataset.sample(0, 0)
    assert first.texts == ["[semantic] person hair", "[semantic] person arm"]  # VLPart's category order
    np.testing.assert_array_equal(first.masks[0], hair)
    np.testing.assert_array_equal(first.masks[1], arm_l | arm_r)
    assert dataset.sample(1, 0).texts == ["[semantic] potted plant pot"]
    # the same annotations as VLPart's json (categories 78 person:arm, 71 person:hair, 84 potted plant:pot)
    json_images = [
        CocoImage("2008_000002.jpg", 24, 32, [(78, [(1, 2, 5, 8), (20, 2, 24, 8)]), (71, [(8, 0, 16, 2)])]),
        CocoImage("2008_000003.jpg", 24, 32, [(84, [(2, 14, 10, 22)])]),
    ]
    categories = [
        {"id": 71, "name": "person:hair"},
        {"id": 78, "name": "person:arm"},
        {"id": 84, "name": "potted plant:pot"},
    ]
    write_coco(tmp_path / "val.json", tmp_path / "json_images", json_images, categories)
    vlpart = PascalPartDataset(tmp_path, "val", max_expressions=None)
    for index in range(2):
        from_json, from_mat = vlpart.sample(index, 0), dataset.sample(index, 0)
        assert from_json.texts == from_mat.texts
        np.testing.assert_array_equal(from_json.masks, from_mat.masks)


def test_pascal_part_mat_bad_files(tmp_path: Path, caplog) -> None:
    write_pascal_part_mat(
        tmp_path, {"2008_000002": (24, 32, [("person", [("hair", _box(0, 2, 8, 16))])])}, "train"
    )
    (tmp_path / "VOCdevkit/VOC2010/ImageSets/Main/train.txt").write_text("2008_000002\n2008_000009\n")
    with pytest.raises(DataError, match=r"PASCAL-Part annotation not found: .*2008_000009\.mat"):
        PascalPartMatDataset(tmp_path, "train")
    assert PascalPartMatDataset(tmp_path, "train", on_bad_sample="skip").skipped == 1
    (tmp_path / "Annotations_Part/2008_000009.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(DataError, match=r"2008_000009\.mat: not a PASCAL-Part annotation"):
        PascalPartMatDataset(tmp_path, "train")
    with pytest.raises(DataError, match="VOC image set not found"):
        PascalPartMatDataset(tmp_path, "val")
    (tmp_path / "VOCdevkit/VOC2010/ImageSets/Main/train.txt").write_text("2008_000002\n")
    (tmp_path / "VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg").write_bytes(b"")
    with pytest.raises(Exception, match=r"cannot read image .*2008_000002\.jpg"):
        PascalPartMatDataset(tmp_path, "train", max_expressions=None).sample(0, 0)
