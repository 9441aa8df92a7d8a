"""Label-map datasets (ADE20K, Mapillary Vistas v2.0 / v1.2, HumanParsing) on tiny real-layout files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evf.datamodules import ADE20KDataset, DataError, HumanParsingDataset, MapillaryDataset
from evf.datamodules.semantic import ADE20K_CLASSES
from evf.io import ImageReadError

from .fixtures import write_ade20k, write_humanparsing, write_mapillary


def _label(
    height: int, width: int, regions: dict[int, tuple[int, int, int, int]], fill: int = 0
) -> np.ndarray:
    label = np.full((height, width), fill, dtype=np.uint8)
    for value, (x0, y0, x1, y1) in regions.items():
        label[y0:y1, x0:x1] = value
    return label


def test_ade20k_classes_are_the_150_first_names() -> None:
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"
    assert ADE20K_CLASSES[12] == "person" and ADE20K_CLASSES[141] == "crt screen"


def test_ade20k_masks_prompts_and_splits(tmp_path: Path) -> None:
    rich = _label(
        30, 40, {1: (0, 0, 40, 10), 13: (5, 12, 15, 28), 150: (20, 15, 30, 25), 21: (32, 20, 40, 30)}
    )
    data = write_ade20k(tmp_path, {"train": [rich, _label(20, 20, {3: (0, 0, 20, 20)})], "val": [rich]})
    val = ADE20KDataset(data, "val", max_expressions=None)
    assert len(val) == 1 and len(ADE20KDataset(data, "train")) == 2
    sample = val.sample(0, 0)
    assert sample.texts == ["[semantic] wall", "[semantic] person", "[semantic] car", "[semantic] flag"]
    for text, mask in zip(sample.texts, sample.masks, strict=True):
        class_id = ADE20K_CLASSES.index(text.removeprefix("[semantic] ")) + 1
        np.testing.assert_array_equal(mask, rich == class_id)  # pixel by pixel; 0 (other) is never a prompt
    assert sample.image.shape == (30, 40, 3)

    train = ADE20KDataset(data, "train", seed=1)
    draws = {tuple(train.sample(0, e).texts) for e in range(8)}
    assert all(len(d) == 3 and set(d) <= set(sample.texts) for d in draws) and len(draws) > 1
    assert train.sample(1, 0).texts == ["[semantic] sky"]


def test_ade20k_rejects_unknown_ids_and_empty_maps(tmp_path: Path) -> None:
    data = write_ade20k(tmp_path, {"train": [_label(10, 10, {151: (0, 0, 3, 3)}), _label(10, 10, {})]})
    dataset = ADE20KDataset(data, "train")
    with pytest.raises(
        DataError, match=r"ADE_train_00000001\.png: value 151 is not a class id of ade20k/train"
    ):
        dataset.sample(0, 0)
    with pytest.raises(DataError, match=r"ADE_train_00000002\.png holds no class"):
        dataset.sample(1, 0)
    rgb_label = data / "annotations/training/ADE_train_00000002.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(rgb_label)
    with pytest.raises(ImageReadError, match=r"ADE_train_00000002\.png has mode RGB; expected"):
        dataset.sample(1, 0)
    with pytest.raises(DataError, match="ADE20K annotation folder not found"):
        ADE20KDataset(tmp_path / "nowhere", "val")


@pytest.mark.parametrize("version, release", [("v2.0", "v2.0"), ("v1.2", "v2.0"), ("v1.2", "v1.2")])
def test_mapillary_palette_labels_and_names(tmp_path: Path, version: str, release: str) -> None:
    label = _label(24, 32, {0: (0, 0, 8, 8), 2: (0, 12, 32, 24), 3: (20, 2, 26, 10)}, fill=4)  # 4 = Unlabeled
    write_mapillary(
        tmp_path,
        version,
        {"val": {"__CRyFzoDOXn6unQ6a3DnQ": label}, "train": {"qeENbXyWUG1dyyRRNCkC8w": label}},
    )
    if release == "v1.2":  # the v1.x release: config.json, <folder>/labels/
        (tmp_path / "config_v1.2.json").rename(tmp_path / "config.json")
        (tmp_path / "validation/v1.2/labels").rename(tmp_path / "validation/labels")
    dataset = MapillaryDataset(tmp_path, "val", version=version, max_expressions=None)
    assert dataset.name == f"mapillary-{version}/val"
    sample = dataset.sample(0, 0)
    assert sample.texts == ["[semantic] bird", "[semantic] road", "[semantic] person"]
    for mask, class_id in zip(sample.masks, (0, 2, 3), strict=True):
        np.testing.assert_array_equal(mask, label == class_id)
    assert sample.image_id == f"mapillary-{version}/val/__CRyFzoDOXn6unQ6a3DnQ.jpg"


def test_humanparsing_left_right_is_the_viewers_side(tmp_path: Path) -> None:
    # The dataset's "left-arm" (id 14) is the person's left arm: on the right of the picture.
    label = _label(40, 30, {2: (10, 0, 20, 8), 4: (8, 8, 22, 24), 14: (22, 8, 28, 22), 15: (2, 8, 8, 22)})
    data = write_humanparsing(tmp_path, {"997_1": label})
    sample = HumanParsingDataset(data, max_expressions=None).sample(0, 0)
    assert sample.texts == [
        "[semantic] background",
        "[semantic] hair",
        "[semantic] upper clothes",
        "[semantic] right arm",
        "[semantic] left arm",
    ]
    right = sample.masks[sample.texts.index("[semantic] right arm")]
    np.testing.assert_array_equal(right, label == 14)
    assert np.nonzero(right)[1].min() > 15  # the "right arm" is on the viewer's right
    with pytest.raises(DataError, match=r"humanparsing \(atr\) has the split\(s\) \['train'\], not 'val'"):
        HumanParsingDataset(data, "val")
