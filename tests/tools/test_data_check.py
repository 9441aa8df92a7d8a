"""``evf data-check``: counts, lengths and truncation per split, every bad record, a preview PNG,
exit status 1 on bad data and 0 on clean data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from evf.cli import main
from evf.datamodules.shapes import ShapesDataset
from tests.datamodules.custom_fixtures import (
    labelme_mask_shape,
    write_jsonl_from_shapes,
    write_labelme_file,
    write_labelme_from_shapes,
)
from tests.datamodules.fixtures import box_mask, picture


def _config(tmp_path: Path, train: list[dict], val: list[dict]) -> Path:
    data = {"class_path": "evf.datamodules.MixtureDataModule", "init_args": {"train": train, "val": val}}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"model": {"encoder": "beit3_tiny", "backend": "sam_tiny"}, "data": data}))
    return path


def _check(config: Path, out: Path, capsys) -> tuple[int, str]:
    try:
        main(["data-check", "--config", str(config), f"--out={out}", "--preview=6"])
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().out


def test_clean_data_exits_0_with_counts_lengths_and_a_preview(tmp_path: Path, capsys) -> None:
    jsonl = tmp_path / "jsonl"
    write_jsonl_from_shapes(jsonl, {"train": 2, "val": 1})
    long = {"image": "images/val_0000.png", "expressions": [" ".join(["very"] * 80)], "no_target": True}
    with (jsonl / "annotations.jsonl").open("a") as f:
        f.write(json.dumps({**long, "split": "val"}) + "\n")
    spec = {"kind": "referring_jsonl", "root": str(jsonl)}
    config = _config(tmp_path, [{**spec, "split": "train"}], [{**spec, "split": "val"}])
    code, out = _check(config, tmp_path / "preview/grid.png", capsys)
    assert code == 0, out
    train_texts = sum(len(ShapesDataset("train", 2, 0, None).sample(i, 0).texts) for i in range(2))
    val_texts = len(ShapesDataset("val", 1, 0, None).sample(0, 0).texts) + 1
    assert (
        f"train:referring_jsonl/train: 2 images, {train_texts} expressions (untagged {train_texts}); " in out
    )
    validate = f"validate:referring_jsonl/val: 1 images, {val_texts} expressions"
    assert f"{validate} (no_target 1, untagged {val_texts - 1}); 1 no-target" in out
    assert "max 80;" in out and "truncated 1)" in out  # words; beit3_tiny's token limit cuts the long one
    assert "truncated 0)" in out
    assert "bad records: 0" in out
    grid = np.asarray(Image.open(tmp_path / "preview/grid.png"))
    assert grid.shape[1] == 3 * 256 and 256 < grid.shape[0] < 2 * 256  # one tile per image, 3 images
    assert "preview:" in out and "(3 expressions" in out


def test_bad_records_are_listed_and_exit_1(tmp_path: Path, capsys) -> None:
    labelme = tmp_path / "labelme"
    write_labelme_from_shapes(labelme, "train", 2)
    write_labelme_file(
        labelme, "outside", picture(20, 24, 0),
        [{"label": "x", "points": [[1, 1], [90, 1], [5, 5]], "shape_type": "polygon"}],
    )  # fmt: skip
    write_labelme_file(
        labelme, "gone", picture(20, 24, 0), [labelme_mask_shape("box", box_mask(20, 24, [(1, 1, 5, 5)]))]
    )
    (labelme / "gone.png").unlink()
    (labelme / "broken.json").write_text("{")
    spec = {"kind": "labelme", "root": str(labelme), "split": "train"}
    missing = {"kind": "mask_folder", "root": str(tmp_path / "nowhere"), "split": "val"}
    code, out = _check(_config(tmp_path, [spec], [missing]), tmp_path / "grid.png", capsys)
    assert code == 1
    assert "bad records: 4" in out
    assert "root folder not found" in out and "nowhere" in out
    assert "broken.json is not valid JSON" in out
    assert "outside.json shapes[0]: polygon point (90, 1) lies outside the 20x24 image" in out
    assert "image not found" in out and "gone.png" in out
    assert "train:labelme/train: 2 images" in out  # the readable ones are still counted


def test_an_unknown_kind_is_refused_by_the_parser(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, [{"kind": "no_such_kind", "root": str(tmp_path)}], [])
    with pytest.raises(SystemExit) as exit_:
        main(["data-check", "--config", str(config)])
    assert exit_.value.code == 2 and "no_such_kind" in capsys.readouterr().err


def test_void_shapes_and_pixels_are_reported(tmp_path: Path, capsys) -> None:
    labelme = tmp_path / "labelme"
    shapes = [
        {"label": "cup", "points": [[1, 1], [6, 6]], "shape_type": "rectangle"},
        {"label": "__ignore__", "points": [[10, 10], [14, 14]], "shape_type": "rectangle"},  # 5 x 5
        {"label": "_background_", "points": [[0, 15], [23, 19]], "shape_type": "rectangle"},
    ]
    write_labelme_file(labelme, "desk", picture(20, 24, 0), shapes)
    spec = {"kind": "labelme", "root": str(labelme), "split": "train"}
    code, out = _check(_config(tmp_path, [spec], []), tmp_path / "grid.png", capsys)
    assert code == 0, out
    assert "void (__ignore__, void_labels): 1 shapes, 25 pixels in the items checked" in out
