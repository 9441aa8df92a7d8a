"""Each user format end to end: a two-step `evf fit` with a validation, on a MixtureDataModule
config, with the tiny model. In skip mode an unreadable validation image is counted, not replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .custom_fixtures import (
    write_coco_from_shapes,
    write_jsonl_from_shapes,
    write_labelme_from_shapes,
    write_mask_folder_from_shapes,
)
from .fixtures import fit_two_steps


def _write(kind: str, root: Path) -> dict:
    """Writes 2 training and 2 validation scenes; returns the spec options."""
    if kind == "referring_jsonl":
        write_jsonl_from_shapes(root, {"train": 2, "val": 2})
    elif kind == "mask_folder":
        write_mask_folder_from_shapes(root, {"train": 2, "val": 2})
    elif kind == "coco_instances":
        for split in ("train", "val"):
            write_coco_from_shapes(root, split, 2)
        return {"negatives": 1}
    else:
        for split in ("train", "val"):
            write_labelme_from_shapes(root / split, split, 2)
        return {"annotations": "{split}"}
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["referring_jsonl", "mask_folder", "coco_instances", "labelme"])
def test_fit_on_a_user_format(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "data"
    options = _write(kind, root)
    skip = kind == "referring_jsonl"
    if skip:  # one validation image gone and one line broken: evaluated never, each counted once
        (root / "images/val_0001.png").unlink()
        with (root / "annotations.jsonl").open("a") as lines:  # dropped while the index is built
            lines.write('{"image": "images/val_0000.png", "expressions": ["the red one"], "split": "val"}\n')
    spec = {"kind": kind, "root": str(root), "options": options}
    config = {
        "data": {
            "class_path": "evf.datamodules.MixtureDataModule",
            "init_args": {
                "train": [{**spec, "split": "train"}],
                "val": [{**spec, "split": "val"}],
                "samples_per_epoch": 2,
                "batch_size": 2,
                "eval_batch_size": 2,
                "num_workers": 0,
                "on_bad_sample": "skip" if skip else "error",
            },
        }
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    rows = fit_two_steps(tmp_path / "data.yaml", tmp_path / "run")
    assert any(row.get("train/loss") for row in rows)
    val = [row for row in rows if row.get(f"val/{kind}/val/ciou")]
    assert val, f"no validation metric for {kind}"
    skipped = val[-1].get(f"val/{kind}/val/skipped")
    assert (float(skipped) == 2.0) if skip else not skipped
    record = json.loads(next((tmp_path / "run").rglob("results_validate.json")).read_text())
    assert record["skipped"] == ({f"{kind}/val": 2} if skip else {})
