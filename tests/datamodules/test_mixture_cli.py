"""A two-step fit on a fixture mixture through the real CLI, with a metric per named validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from .fixtures import Ref, ReferImage, fit_two_steps, write_ade20k, write_humanparsing, write_refer


@pytest.mark.slow
def test_two_step_fit_on_a_mixture_through_the_cli(tmp_path: Path) -> None:
    refer = [
        ReferImage(
            24,
            32,
            [Ref([(2, 2, 12, 12 + n)], [f"the left thing {n}"], s), Ref([(14, 4, 30, 20)], ["right box"], s)],
        )
        for n, s in enumerate(["train", "train", "val", "testA"])
    ]
    write_refer(tmp_path / "refer_seg", "refcoco", "unc", refer)
    ade = write_ade20k(
        tmp_path,
        {
            "train": [np.pad(np.full((6, 6), 13, np.uint8), 5)],
            "val": [np.pad(np.full((6, 6), 3, np.uint8), 5)],
        },
    )
    parsing = write_humanparsing(tmp_path, {"1_1": np.pad(np.full((8, 4), 14, np.uint8), 4)})
    refer_root = str(tmp_path / "refer_seg")
    config = {
        "data": {
            "class_path": "evf.datamodules.MixtureDataModule",
            "init_args": {
                "train": [
                    {"kind": "refcoco", "root": refer_root, "split": "train", "rate": 2.0},
                    {"kind": "ade20k", "root": str(ade), "split": "train", "rate": 1.0},
                    {"kind": "humanparsing", "root": str(parsing), "split": "train", "rate": 1.0},
                ],
                "val": [
                    {"kind": "refcoco", "root": refer_root, "split": "val"},
                    {"kind": "refcoco", "root": refer_root, "split": "testA"},
                    {"kind": "ade20k", "root": str(ade), "split": "val"},
                ],
                "samples_per_epoch": 4,
                "batch_size": 2,
                "eval_batch_size": 1,
                "num_workers": 0,
                "augment": True,
            },
        }
    }
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    rows = fit_two_steps(
        tmp_path / "mix.yaml",
        run,
        "--data",
        "evf.datamodules.MixtureDataModule",
        "--trainer.limit_val_batches=1",
    )
    columns = set(rows[0])
    for split in ("refcoco/val", "refcoco/testA", "ade20k/val"):
        assert f"val/{split}/ciou" in columns and f"val/{split}/giou" in columns
    assert any(row.get("train/loss") for row in rows)
    assert next(run.rglob("*.ckpt"), None) is not None
