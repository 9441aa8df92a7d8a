"""``evf annotate-objects365`` with a tiny random SAM: sharding, resume, RLE round trip, output layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from evf.cli import main as evf_main
from evf.datamodules import Objects365Dataset
from evf.io import read_rgb
from evf.sam_backends import create_backend
from evf.tools import annotate_objects365 as tool
from tests.datamodules.fixtures import OBJECTS365_CATEGORIES, CocoImage, write_coco

IMAGES = [
    CocoImage(
        "obj365_train_000000000019.jpg",
        30,
        40,
        [(1, [(2, 2, 12, 28)]), (5, [(14, 10, 24, 20)]), (5, [(26, 10, 38, 20)])],
        "none",
    ),
    CocoImage("obj365_train_000000000023.jpg", 20, 20, [(5, [(0, 0, 5, 5)]), (5, [(6, 6, 9, 9)])], "none"),
    CocoImage(
        "obj365_train_000000000031.jpg", 16, 24, [(2, [(1, 1, 8, 15)]), (5, [(10, 2, 23, 14)])], "none"
    ),
    CocoImage("obj365_train_000000000047.jpg", 24, 18, [(1, [(3, 3, 15, 20)])], "none"),
]


@pytest.fixture()
def objects365(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "Objects365"
    write_coco(root / "zhiyuan_objv2_train.json", root / "train", IMAGES, OBJECTS365_CATEGORIES)
    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(create_backend("sam_tiny").sam.state_dict(), checkpoint)
    return {
        "root": root,
        "json": root / "zhiyuan_objv2_train.json",
        "out": tmp_path / "work" / "o365_sam.json",
        "ckpt": checkpoint,
    }


def _run(paths: dict[str, Path], *extra: str) -> None:
    evf_main(
        [
            "annotate-objects365",
            str(paths["json"]),
            str(paths["out"]),
            "--image_root",
            str(paths["root"] / "train"),
            "--backend",
            "sam_tiny",
            "--checkpoint",
            str(paths["ckpt"]),
            "--batch_size",
            "2",
            "--device",
            "cpu",
            *extra,
        ]
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shards_resume_and_merge(objects365: dict[str, Path], monkeypatch, capsys) -> None:
    _run(objects365, "--shard", "0", "--num_shards", "2")
    shard0 = tool.progress_path(objects365["out"], 0, 2)
    assert shard0.name == "o365_sam.json.shard-0-of-2.jsonl" and not objects365["out"].exists()
    assert [line.get("image_id") for line in _lines(shard0)] == [
        None,
        1,
        3,
    ]  # header, then images 1 and 3 of 1..4
    assert _lines(shard0)[0]["header"]["backend"] == "sam_tiny"
    with pytest.raises(SystemExit):  # the command line prints the DataError's message, no traceback
        _run(objects365, "--num_shards", "2", "--merge", "true")
    assert "shard 1 of 2 is not finished (2 images to go" in capsys.readouterr().err

    # A crash in the middle of writing image 3's line: the rerun drops the torn line and redoes image 3 only.
    complete = shard0.read_bytes()
    first_two = complete[: complete.index(b"\n", complete.index(b"\n") + 1) + 1]
    shard0.write_bytes(first_two + b'{"image_id": 3, "mas')
    _run(objects365, "--shard", "0", "--num_shards", "2")
    redone, before = _lines(shard0), [json.loads(line) for line in complete.decode().splitlines()]
    assert shard0.read_bytes().startswith(first_two) and redone[2]["image_id"] == 3 and len(redone) == 3
    assert [m["segmentation"] for m in redone[2]["masks"]] == [m["segmentation"] for m in before[2]["masks"]]
    assert [m["score"] for m in redone[2]["masks"]] == pytest.approx(
        [m["score"] for m in before[2]["masks"]], abs=1e-4
    )

    _run(objects365, "--shard", "1", "--num_shards", "2")
    monkeypatch.setattr(
        tool, "create_backend", lambda *a, **k: pytest.fail("a finished shard must not load a model")
    )
    _run(objects365, "--shard", "1", "--num_shards", "2")
    _run(objects365, "--num_shards", "2", "--merge", "true")

    out = json.loads(objects365["out"].read_text())
    source = json.loads(objects365["json"].read_text())
    assert out["images"] == source["images"] and out["categories"] == source["categories"]
    annotated = {a["id"] for a in out["annotations"] if "segmentation" in a}
    assert annotated == {
        10,
        30,
        31,
        40,
    }  # single-instance categories only; both cars of image 1 and 2 left as boxes
    assert [
        dict((k, v) for k, v in a.items() if k not in ("segmentation", "score")) for a in out["annotations"]
    ] == source["annotations"]

    backend = create_backend("sam_tiny", checkpoint=objects365["ckpt"]).eval()
    image = read_rgb(objects365["root"] / "train" / IMAGES[2].file_name)
    ((masks, scores),) = tool.segment_boxes(
        backend, [image], [np.array([[1, 1, 8, 15], [10, 2, 23, 14]], dtype=float)]
    )
    for ann_id, mask, score in zip((30, 31), masks, scores, strict=True):
        (ann,) = [a for a in out["annotations"] if a["id"] == ann_id]
        assert ann["segmentation"]["size"] == [16, 24] and isinstance(ann["segmentation"]["counts"], str)
        np.testing.assert_array_equal(
            mask_utils.decode(ann["segmentation"]).astype(bool), mask
        )  # RLE round trip
        assert ann["score"] == pytest.approx(float(score), abs=1e-5)

    # The merged file is what the Objects365 dataset trains on (seed 0 gives non-empty masks).
    dataset = Objects365Dataset(objects365["root"], annotations=objects365["out"], max_expressions=None)
    assert len(dataset) == 3
    sample = dataset.sample(1, 0)
    assert sample.texts == ["sneakers", "car"]
    np.testing.assert_array_equal(sample.masks, masks)


def test_changed_settings_on_resume_are_refused(objects365: dict[str, Path], capsys) -> None:
    _run(objects365)
    assert objects365["out"].is_file(), "a single shard merges at its end"
    with pytest.raises(SystemExit):
        _run(objects365, "--unique_only", "false")
    assert "was started with" in capsys.readouterr().err
