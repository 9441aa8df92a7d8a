"""COCO-style instance datasets: PartImageNet, PASCAL-Part (VLPart) and Objects365 with SAM masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evf.datamodules import DataError, Objects365Dataset, PartImageNetDataset, PascalPartDataset

from .fixtures import (
    OBJECTS365_CATEGORIES,
    PARTIMAGENET_CATEGORIES,
    PASCAL_PART_CATEGORIES,
    CocoImage,
    box_mask,
    write_coco,
)


def test_partimagenet_merges_instances_of_a_part(tmp_path: Path) -> None:
    root = tmp_path / "PartImageNet"
    images = [
        CocoImage(
            "n01440764_10043.JPEG",
            30,
            40,
            [(0, [(2, 2, 10, 10)]), (1, [(12, 5, 30, 25)]), (0, [(32, 2, 38, 9)])],
        ),
        CocoImage("n01530575_10086.JPEG", 20, 20, [(15, [(0, 0, 20, 6)])], encoding="rle"),
    ]
    write_coco(root / "annotations/train/train.json", root / "images/train", images, PARTIMAGENET_CATEGORIES)
    dataset = PartImageNetDataset(root, "train", max_expressions=None)
    assert len(dataset) == 2
    sample = dataset.sample(0, 0)
    assert sample.texts == [
        "[semantic] quadruped head",
        "[semantic] quadruped body",
    ]  # category id 0 included
    np.testing.assert_array_equal(sample.masks[0], box_mask(30, 40, [(2, 2, 10, 10), (32, 2, 38, 9)]))
    np.testing.assert_array_equal(sample.masks[1], box_mask(30, 40, [(12, 5, 30, 25)]))
    second = dataset.sample(1, 0)
    assert second.texts == ["[semantic] bird wing"]
    np.testing.assert_array_equal(second.masks[0], box_mask(20, 20, [(0, 0, 20, 6)]))


def test_pascal_part_names_and_layout(tmp_path: Path) -> None:
    root = tmp_path / "pascal_part"
    image = CocoImage(
        "2008_000002.jpg", 24, 36, [(71, [(4, 0, 12, 5)]), (19, [(20, 18, 30, 22)]), (1, [(0, 6, 36, 16)])]
    )
    write_coco(root / "train.json", root / "VOCdevkit/VOC2010/JPEGImages", [image], PASCAL_PART_CATEGORIES)
    dataset = PascalPartDataset(root, "train", seed=3)
    draws = [dataset.sample(0, e) for e in range(4)]
    expected = {
        "[semantic] person hair": [(4, 0, 12, 5)],
        "[semantic] bus license plate": [(20, 18, 30, 22)],
        "[semantic] aeroplane body": [(0, 6, 36, 16)],
    }
    for sample in draws:
        assert sorted(sample.texts) == sorted(expected)
        for text, mask in zip(sample.texts, sample.masks, strict=True):
            np.testing.assert_array_equal(mask, box_mask(24, 36, expected[text]))
    assert len({tuple(s.texts) for s in draws}) > 1, "the order of the drawn parts changes with the epoch"


def _objects365(root: Path) -> Path:
    images = [
        # one person, two cars (ambiguous: dropped), one crowd of sneakers (dropped)
        CocoImage(
            "obj365_train_000000000019.jpg",
            30,
            40,
            [(1, [(2, 2, 12, 28)]), (5, [(14, 10, 24, 20)]), (5, [(26, 10, 38, 20)]), (2, [(0, 26, 40, 30)])],
            encoding="rle",
            crowd=[False, False, False, True],
        ),
        CocoImage(
            "obj365_train_000000000023.jpg",
            20,
            20,
            [(5, [(0, 0, 5, 5)]), (5, [(6, 6, 9, 9)])],
            encoding="rle",
        ),
        CocoImage(
            "obj365_train_000000000031.jpg",
            16,
            24,
            [(2, [(1, 1, 8, 15)]), (5, [(10, 2, 23, 14)])],
            encoding="rle",
        ),
    ]
    write_coco(root / "objects365_train_sam.json", root / "train", images, OBJECTS365_CATEGORIES)
    return root


def test_objects365_keeps_categories_with_exactly_one_instance(tmp_path: Path) -> None:
    root = _objects365(tmp_path / "Objects365")
    dataset = Objects365Dataset(root, "train", annotations="objects365_train_sam.json", max_expressions=None)
    assert len(dataset) == 2  # the image with two cars only has nothing unambiguous
    first, second = dataset.sample(0, 0), dataset.sample(1, 0)
    assert first.texts == ["person"]
    np.testing.assert_array_equal(first.masks[0], box_mask(30, 40, [(2, 2, 12, 28)]))
    assert second.texts == ["sneakers", "car"]
    np.testing.assert_array_equal(second.masks[1], box_mask(16, 24, [(10, 2, 23, 14)]))
    assert second.image_id == "objects365/obj365_train_000000000031.jpg"


def test_objects365_without_masks_points_at_the_annotation_tool(tmp_path: Path) -> None:
    root = tmp_path / "Objects365"
    write_coco(
        root / "boxes.json",
        root / "train",
        [CocoImage("a.jpg", 8, 8, [(1, [(0, 0, 4, 4)])], encoding="none")],
        OBJECTS365_CATEGORIES,
    )
    with pytest.raises(
        DataError, match=r"annotations\[id=10\]: no segmentation; masks come from `evf annotate-objects365`"
    ):
        Objects365Dataset(root, annotations="boxes.json").sample(0, 0)
    with pytest.raises(DataError, match="set `annotations`"):
        Objects365Dataset(root)
