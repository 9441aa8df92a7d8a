"""Distributed evaluation counts every expression exactly once (no padded duplicates)."""

import lightning as L
import pytest
import torch

from evf.datamodules import ShapesDataModule
from evf.module import EVFSAMModule


def _validate(devices: int, strategy: str) -> dict[str, float]:
    L.seed_everything(0)
    module = EVFSAMModule("beit3_tiny", "sam_tiny", num_logged_images=0)
    # 5 validation images (not divisible by 2), batches of 2 -> ranks get 3 and 2 images.
    data = ShapesDataModule(num_train=4, num_val=5, eval_batch_size=2, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    (results,) = trainer.validate(module, datamodule=data)
    return results


@pytest.mark.slow
def test_two_process_validation_equals_single_process():
    torch.manual_seed(0)
    single = _validate(1, "auto")
    double = _validate(2, "ddp_spawn")
    assert {"val/shapes/val/ciou", "val/shapes/val/giou", "val/ciou", "val/giou"} <= set(single)
    assert any(key.startswith("val/shapes/val/position/") for key in single)  # per kind, synced too
    assert set(double) == set(single)
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-6), key
