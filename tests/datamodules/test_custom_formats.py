"""Your own annotations: JSON Lines, mask folders, COCO instances and LabelMe folders read back
exactly (the shapes dataset written in each format gives the shapes DataModule's masks), with
templates, plural unions, semantic mode, negatives and LabelMe's shape types and groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evf.datamodules import (
    CocoInstancesDataset,
    DatasetSpec,
    LabelMeDataset,
    MaskFolderDataset,
    ReferringJsonlDataset,
    build_dataset,
)
from evf.datamodules.shapes import ShapesDataset

from .custom_fixtures import (
    labelme_mask_shape,
    shape_unions,
    shapes_scenes,
    write_coco_from_shapes,
    write_jsonl_from_shapes,
    write_labelme_file,
    write_labelme_from_shapes,
    write_mask_folder_from_shapes,
)
from .fixtures import box_mask, picture

SPLITS = {"train": 3, "val": 2}


def _assert_same_as_shapes(dataset, split: str) -> None:
    truth = ShapesDataset(split, SPLITS[split], seed=0, max_expressions=None)
    assert len(dataset) == len(truth)
    for index in range(len(truth)):
        got, want = dataset.sample(index, 0), truth.sample(index, 0)
        assert got.texts == want.texts
        np.testing.assert_array_equal(got.masks, want.masks)
        np.testing.assert_array_equal(got.image, want.image)
        assert got.kinds == []


@pytest.mark.parametrize(
    ("writer", "reader"),
    [(write_jsonl_from_shapes, ReferringJsonlDataset), (write_mask_folder_from_shapes, MaskFolderDataset)],
    ids=["referring_jsonl", "mask_folder"],
)
def test_referent_formats_round_trip_the_shapes_dataset(tmp_path: Path, writer, reader) -> None:
    writer(tmp_path, SPLITS)
    for split in SPLITS:
        _assert_same_as_shapes(reader(tmp_path, split, max_expressions=None), split)
    train = reader(tmp_path, "train", max_expressions=2)
    truth = ShapesDataset("train", 3, seed=0, max_expressions=None).sample(0, 0)
    for epoch in range(3):
        sample = train.sample(0, epoch)
        assert len(sample.texts) == 2 and sample.texts == train.sample(0, epoch).texts
        for text, mask in zip(sample.texts, sample.masks, strict=True):  # each drawn text keeps its mask
            np.testing.assert_array_equal(mask, truth.masks[truth.texts.index(text)])


def _expected(scene, plural: bool = True) -> tuple[list[str], list[np.ndarray], list[str]]:
    texts, masks, kinds = [], [], []
    for name, (mask, count) in sorted(shape_unions(scene).items()):
        templates = ("{name}", "every {name}") if count > 1 and plural else ("{name}", "the {name}")
        texts += [t.format(name=name) for t in templates]
        masks += [mask, mask]
        kinds += ["multi_target" if count > 1 else "single_target"] * 2
    return texts, masks, kinds


@pytest.mark.parametrize("kind", ["coco_instances", "labelme"])
def test_category_formats_round_trip_the_shapes_dataset(tmp_path: Path, kind: str) -> None:
    if kind == "coco_instances":
        write_coco_from_shapes(tmp_path, "val", 4)
        dataset = CocoInstancesDataset(tmp_path, "val", max_expressions=None)
    else:
        write_labelme_from_shapes(tmp_path / "val", "val", 4)
        dataset = LabelMeDataset(tmp_path, "val", annotations="{split}", max_expressions=None)
    assert dataset.names == ["circle", "square", "triangle"]
    plural_seen = False
    for index, scene in shapes_scenes("val", 4):
        sample = dataset.sample(index, 0)
        texts, masks, kinds = _expected(scene)
        plural_seen |= "multi_target" in kinds
        assert sample.texts == texts and sample.kinds == kinds
        np.testing.assert_array_equal(sample.masks, np.stack(masks))
        np.testing.assert_array_equal(sample.image, scene.image)
    assert plural_seen, "the scenes should hold some shape twice (a union mask)"


def test_semantic_mode_and_negatives(tmp_path: Path) -> None:
    write_coco_from_shapes(tmp_path, "val", 4)
    dataset = CocoInstancesDataset(tmp_path, "val", semantic=True, negatives=1, max_expressions=None)
    for index, scene in shapes_scenes("val", 4):
        unions = shape_unions(scene)
        sample = dataset.sample(index, 0)
        present = [f"[semantic] {n}" for n in sorted(unions)]
        assert sample.texts[: len(present)] == present
        absent = sorted({"circle", "square", "triangle"} - set(unions))
        if absent:  # one negative: an absent shape, all-False mask, tagged no_target
            assert len(sample.texts) == len(present) + 1
            assert sample.texts[-1] in [f"[semantic] {n}" for n in absent]
            assert not sample.masks[-1].any() and sample.kinds[-1] == "no_target"
            assert sample.kinds[:-1] == [""] * len(present)
            assert dataset.sample(index, 0).texts == sample.texts  # evaluation: fixed per image
        for text, mask in zip(sample.texts[: len(present)], sample.masks, strict=False):
            np.testing.assert_array_equal(mask, unions[text.split()[-1]][0])


def test_negatives_in_training_are_drawn_per_epoch_and_images_without_objects_count(tmp_path: Path) -> None:
    write_coco_from_shapes(tmp_path, "train", 2)
    data = json.loads((tmp_path / "annotations/instances_train.json").read_text())
    data["images"].append({**data["images"][0], "id": 99})  # the same picture, no annotation
    data["categories"] += [{"id": 7 + k, "name": f"odd_thing_{k}"} for k in range(6)]
    (tmp_path / "annotations/instances_train.json").write_text(json.dumps(data))
    without = CocoInstancesDataset(tmp_path, "train", max_expressions=None)
    assert len(without) == 2  # the image without annotations yields nothing
    dataset = CocoInstancesDataset(tmp_path, "train", negatives=2, max_expressions=8)
    assert len(dataset) == 3 and "odd thing 0" in dataset.names  # names cleaned: _ -> space
    only_negatives = dataset.sample(2, 0)
    assert only_negatives.kinds == ["no_target"] * 2 and not only_negatives.masks.any()
    draws = {tuple(dataset.sample(0, epoch).texts) for epoch in range(6)}
    assert len(draws) > 1 and dataset.sample(0, 3).texts == dataset.sample(0, 3).texts
    for epoch in range(4):
        sample = dataset.sample(0, epoch)
        negative = [i for i, k in enumerate(sample.kinds) if k == "no_target"]
        assert len(negative) == 2 and all(not sample.masks[i].any() for i in negative)


def test_labelme_shape_types_groups_and_embedded_images(tmp_path: Path) -> None:
    image = picture(40, 50, 3)
    ys, xs = np.mgrid[:40, :50]
    disk = (xs - 30) ** 2 + (ys - 20) ** 2 <= 6.5**2  # radius 6 drawn outline included (PIL, as LabelMe)
    shapes = [
        # one mug drawn in two pieces (group 1): a polygon and a rectangle
        {
            "label": "coffee_mug",
            "points": [[2, 2], [9, 2], [9, 9], [2, 9]],
            "group_id": 1,
            "shape_type": "polygon",
        },
        {"label": "coffee_mug", "points": [[12, 2], [15, 5]], "group_id": 1, "shape_type": "rectangle"},
        {"label": "plate", "points": [[30, 20], [36, 20]], "group_id": None, "shape_type": "circle"},
        {"label": "plate", "points": [[2, 30], [9, 35]], "group_id": None, "shape_type": "rectangle"},
        {"label": "key point", "points": [[1, 1]], "shape_type": "point"},
    ]
    for embed in (False, True):
        folder = tmp_path / f"embed{embed}"
        write_labelme_file(folder, "desk", image, shapes, embed=embed, suffix=".png")
        dataset = LabelMeDataset(folder, max_expressions=None, ignore_shape_types=["point"])
        sample = dataset.sample(0, 0)
        assert sample.texts == ["coffee mug", "the coffee mug", "plate", "every plate"]
        assert sample.kinds == ["single_target"] * 2 + ["multi_target"] * 2
        np.testing.assert_array_equal(sample.masks[0], box_mask(40, 50, [(2, 2, 10, 10), (12, 2, 16, 6)]))
        plate = sample.masks[2]
        np.testing.assert_array_equal(plate[30:36, 2:10], True)  # the rectangle, corners included
        assert plate[25:, :20].sum() == 6 * 8
        circle = plate[:, 20:]
        assert (circle & disk[:, 20:]).sum() / (circle | disk[:, 20:]).sum() > 0.9
        np.testing.assert_array_equal(sample.image, image)


def test_labelme_reserved_and_void_labels_never_become_expressions(tmp_path: Path) -> None:
    image = picture(30, 30, 4)
    shapes = [
        {"label": "cup", "points": [[2, 2], [8, 8]], "shape_type": "rectangle"},
        {"label": "__ignore__", "points": [[10, 10], [14, 14]], "shape_type": "rectangle"},
        {"label": "_background_", "points": [[0, 20], [29, 29]], "shape_type": "rectangle"},
        {"label": "blur", "points": [[20, 2], [25, 6]], "shape_type": "rectangle"},
    ]
    write_labelme_file(tmp_path, "desk", image, shapes)
    dataset = LabelMeDataset(tmp_path, max_expressions=None, void_labels=["blur"])
    sample = dataset.sample(0, 0)
    assert sample.texts == ["cup", "the cup"] and dataset.names == ["cup"]
    assert dataset.void_shapes == 2 and dataset.background_shapes == 1
    assert not any(word in " ".join(sample.texts) for word in ("ignore", "background", "blur"))
    # __ignore__ and the listed label are void pixels (corners included); _background_ is background.
    np.testing.assert_array_equal(sample.void, box_mask(30, 30, [(10, 10, 15, 15), (20, 2, 26, 7)]))
    unlisted = LabelMeDataset(tmp_path, max_expressions=None)
    assert "blur" in unlisted.names  # only when listed
    np.testing.assert_array_equal(unlisted.sample(0, 0).void, box_mask(30, 30, [(10, 10, 15, 15)]))


def test_labelme_void_pixels_reach_the_batch_and_give_no_loss(tmp_path: Path) -> None:
    import torch

    from evf.batch import BatchBuilder
    from evf.losses import mask_losses
    from evf.model import create_model

    shapes = [
        {"label": "cup", "points": [[2, 2], [12, 12]], "shape_type": "rectangle"},
        {"label": "__ignore__", "points": [[8, 8], [20, 20]], "shape_type": "rectangle"},  # overlaps the cup
        {"label": "_background_", "points": [[0, 24], [31, 31]], "shape_type": "rectangle"},
    ]
    write_labelme_file(tmp_path, "desk", picture(32, 32, 4), shapes)
    sample = LabelMeDataset(tmp_path, max_expressions=None).sample(0, 0)
    model = create_model("beit3_tiny", "sam_tiny")
    batch = BatchBuilder(model.encoder.preprocessor, model.backend.info.image)([sample])
    void = batch.void[0]
    np.testing.assert_array_equal(void.numpy(), box_mask(32, 32, [(8, 8, 21, 21)]))
    logits = torch.randn(len(sample.texts), 32, 32, requires_grad=True)
    terms = mask_losses([logits], batch.masks, batch.void)
    (terms["bce"] + terms["dice"]).backward()
    assert logits.grad[:, void].abs().max() == 0 and logits.grad[:, ~void].abs().min() > 0
    # A horizontal flip moves the void pixels with the image and the masks.
    flipped = LabelMeDataset(tmp_path, max_expressions=None, augment=True)
    for epoch in range(8):
        out = flipped.sample(0, epoch)
        if out.texts and not np.array_equal(out.masks[0], sample.masks[0]):
            np.testing.assert_array_equal(out.void, sample.void[:, ::-1])
            np.testing.assert_array_equal(out.masks[0], sample.masks[0][:, ::-1])
            break
    else:
        pytest.fail("no epoch flipped the image")


def test_labelme_mask_shapes_are_exact(tmp_path: Path) -> None:
    mask = box_mask(30, 30, [(3, 4, 11, 9), (8, 9, 11, 20)])
    write_labelme_file(tmp_path, "a", picture(30, 30, 1), [labelme_mask_shape("bolt", mask)])
    np.testing.assert_array_equal(LabelMeDataset(tmp_path, max_expressions=None).sample(0, 0).masks[0], mask)


def test_jsonl_no_target_lines_and_kinds(tmp_path: Path) -> None:
    from .custom_fixtures import rle
    from .fixtures import save_image

    save_image(tmp_path / "a.png", picture(20, 24, 0))
    mask = box_mask(20, 24, [(2, 3, 10, 12)])
    lines = [
        {"image": "a.png", "expressions": ["the box", "box "], "mask": rle(mask)},
        {"image": "a.png", "expressions": ["a giraffe"], "no_target": True},
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    sample = ReferringJsonlDataset(tmp_path, "val", annotations="data.jsonl", max_expressions=None).sample(
        0, 0
    )
    assert sample.texts == ["the box", "box", "a giraffe"]
    assert sample.kinds == ["", "", "no_target"]
    np.testing.assert_array_equal(sample.masks[0], mask)
    assert not sample.masks[2].any()


def test_templates_are_checked() -> None:
    with pytest.raises(ValueError, match="must contain"):
        CocoInstancesDataset("/nowhere", templates=["the thing"])
    with pytest.raises(ValueError, match="must contain"):
        CocoInstancesDataset("/nowhere", plural_templates=["{name} of {colour}"])


def test_custom_templates(tmp_path: Path) -> None:
    write_coco_from_shapes(tmp_path, "val", 2)
    dataset = CocoInstancesDataset(
        tmp_path, "val", templates=["a {name} shape"], plural_templates=["all {name}s"], max_expressions=None
    )
    for index, scene in shapes_scenes("val", 2):
        want = [
            f"all {name}s" if count > 1 else f"a {name} shape"
            for name, (_, count) in sorted(shape_unions(scene).items())
        ]
        assert dataset.sample(index, 0).texts == want


def test_the_catalog_builds_every_new_kind(tmp_path: Path) -> None:
    write_jsonl_from_shapes(tmp_path / "jsonl", SPLITS)
    write_mask_folder_from_shapes(tmp_path / "csv", SPLITS)
    write_coco_from_shapes(tmp_path / "coco", "val", 2)
    write_labelme_from_shapes(tmp_path / "labelme", "val", 2)
    specs = {
        "referring_jsonl": DatasetSpec("referring_jsonl", str(tmp_path / "jsonl"), "val"),
        "mask_folder": DatasetSpec("mask_folder", str(tmp_path / "csv"), "val"),
        "coco_instances": DatasetSpec(
            "coco_instances", str(tmp_path / "coco"), "val", options={"negatives": 1}
        ),
        "labelme": DatasetSpec("labelme", str(tmp_path / "labelme"), "val", options={"semantic": True}),
    }
    for kind, spec in specs.items():
        dataset = build_dataset(spec, seed=0, max_expressions=None)
        assert len(dataset) == 2 and dataset.name == f"{kind}/val"
    with pytest.raises(ValueError, match="bad options"):
        build_dataset(
            DatasetSpec("labelme", str(tmp_path / "labelme"), "val", options={"negative": 1}),
            seed=0,
            max_expressions=None,
        )
