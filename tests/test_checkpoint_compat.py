"""A checkpoint written by the code before the one-prediction-path refactor still loads and gives the
numbers it gave then (tests/fixtures/v0_checkpoint/README.md)."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from evf.cli import main
from evf.datamodules import ShapesDataModule
from evf.datamodules.predict import read_manifest
from evf.io import read_rgb
from evf.losses import mask_losses
from evf.module import EVFSAMModule
from evf.prediction import predict_prompts

FIXTURE = Path(__file__).parent / "fixtures" / "v0_checkpoint"
CPU = ["--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _model():
    return EVFSAMModule.load_from_checkpoint(FIXTURE / "tiny_v0.ckpt", map_location="cpu").eval()


def test_evf_predict_writes_the_same_masks_and_scores(tmp_path):
    work = tmp_path / "in"
    shutil.copytree(FIXTURE, work, ignore=shutil.ignore_patterns("*.ckpt", "*.npz", "predictions.json"))
    for batch_size in (1, 2):
        out = tmp_path / f"bs{batch_size}"
        main(["predict", f"--ckpt_path={FIXTURE / 'tiny_v0.ckpt'}", f"--manifest={work / 'manifest.json'}",
              f"--output={out}", f"--batch_size={batch_size}", *CPU])  # fmt: skip
        records = json.loads((out / "predictions.json").read_text())
        expected = json.loads((FIXTURE / "predictions.json").read_text())
        assert len(records) == len(expected) == 6
        for ours, theirs in zip(records, expected, strict=True):
            theirs["image"] = theirs["image"].replace(str(Path("/tmp/fx")), str(work))
            assert ours["rle"] == theirs["rle"] and ours["area"] == theirs["area"] > 0
            assert abs(ours["score"] - theirs["score"]) < 1e-5
            assert {k: v for k, v in ours.items() if k not in ("score", "image")} == {
                k: v for k, v in theirs.items() if k not in ("score", "image")
            }


def test_mixed_prompts_give_the_same_logits():
    model = _model().model
    expected = np.load(FIXTURE / "expected_logits.npz")
    for k, item in enumerate(read_manifest(FIXTURE / "manifest.json")):
        result = predict_prompts(model, read_rgb(item.path), item.prompts)
        torch.testing.assert_close(result.logits, torch.from_numpy(expected[f"logits_{k}"]), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(result.scores, torch.from_numpy(expected[f"scores_{k}"]), atol=1e-5, rtol=1e-5)


def test_training_batch_gives_the_same_loss_and_logits():
    module = _model()
    dm = ShapesDataModule(num_train=3, num_val=2, num_test=2, num_workers=0, encoder="beit3_tiny",
                          backend="sam_tiny")  # fmt: skip
    dataset = dm.train_dataset()
    batch = dm.builder([dataset.sample(i, 0) for i in range(len(dataset))])
    expected = json.loads((FIXTURE / "expected.json").read_text())
    with torch.no_grad():
        logits = module._forward_batch(batch)
    assert batch["texts"] == expected["texts"]
    terms = mask_losses(logits, batch["masks"])
    for name, value in expected["loss_terms"].items():
        assert abs(float(terms[name]) - value) < 1e-5
    sums = [float(lg.double().sum()) for lg in logits]
    np.testing.assert_allclose(sums, expected["logit_sums"], rtol=1e-5)
