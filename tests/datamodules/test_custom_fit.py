"""Each user format end to end: a two-step `evf fit` with a validation, on a MixtureDataModule
config, with the tiny model. In skip mode an unreadable validation image is counted, not replaced."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from evf.cli import main

from .custom_fixtures import (
    write_coco_from_shapes,
    write_jsonl_from_shapes,
    write_labelme_from_shapes,
    write_mask_folder_from_shapes,
)


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
    if skip:  # one validation image gone: evaluated never, counted once
        (root / "images/val_0001.png").unlink()
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
    run = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            str(tmp_path / "data.yaml"),
            "--model.encoder=beit3_tiny",
            "--model.backend=sam_tiny",
            "--trainer.accelerator=cpu",
            "--trainer.max_steps=2",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.log_every_n_steps=1",
            f"--trainer.default_root_dir={run}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.init_args.save_dir={run}",
        ]
    )
    (metrics_file,) = run.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    assert any(row.get("train/loss") for row in rows)
    val = [row for row in rows if row.get(f"val/{kind}/val/ciou")]
    assert val, f"no validation metric for {kind}"
    skipped = val[-1].get(f"val/{kind}/val/skipped")
    assert (float(skipped) == 1.0) if skip else not skipped
