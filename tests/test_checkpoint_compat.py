"""A checkpoint written by the code before the one-prediction-path refactor still loads and gives the
numbers it gave then (tests/fixtures/v0_checkpoint/README.md)."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from evf.cli import main
from evf.datamodules import ShapesDataModule
from evf.decode import decode
from evf.inputs import read_manifest
from evf.io import read_rgb
from evf.losses import mask_losses
from evf.module import EVFSAMModule
from tests.helpers import segment

FIXTURE = Path(__file__).parent / "fixtures" / "v0_checkpoint"
CPU = ["--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _model():
    return EVFSAMModule.load_from_checkpoint(FIXTURE / "tiny_v0.ckpt", map_location="cpu").eval()


def _predict(manifest, out, batch_size=1):
    main(["predict", f"--ckpt_path={FIXTURE / 'tiny_v0.ckpt'}", f"--manifest={manifest}", f"--output={out}",
          f"--batch_size={batch_size}", *CPU])  # fmt: skip
    return json.loads((out / "predictions.json").read_text())


def _same(ours, theirs):
    assert ours["rle"] == theirs["rle"] and ours["area"] == theirs["area"] > 0
    assert abs(ours["score"] - theirs["score"]) < 1e-5
    # Fields added since (generalized referring): a model without a presence head is always "there",
    # and the connected instances make up the mask.
    assert ours["presence"] == 1.0 and ours["present"] is True
    assert sum(i["area"] for i in ours["instances"]) == ours["area"]
    drop = ("score", "image", "presence", "present", "instances")
    assert {k: v for k, v in ours.items() if k not in drop} == {
        k: v for k, v in theirs.items() if k not in drop
    }


def test_evf_predict_writes_the_same_masks_and_scores(tmp_path):
    work = tmp_path / "in"
    shutil.copytree(FIXTURE, work, ignore=shutil.ignore_patterns("*.ckpt", "*.npz", "predictions*.json"))
    expected = json.loads((FIXTURE / "predictions.json").read_text())
    alone = json.loads((FIXTURE / "predictions_alone.json").read_text())
    for batch_size in (1, 2):
        records = _predict(work / "manifest.json", tmp_path / f"bs{batch_size}", batch_size)
        assert len(records) == len(expected) == 6
        for k, (ours, theirs) in enumerate(zip(records, expected, strict=True)):
            # Record 4 (b.png's text-only prompt) was padded with point tokens before; it now
            # decodes with its own tokens only, as the old code did for it alone (README.md).
            _same(ours, alone[0] if k == 4 else theirs)
    assert expected[4]["rle"] != alone[0]["rle"]  # the fixture does show the old padding


def test_mixed_prompts_give_the_same_logits():
    model = _model().model
    expected = dict(np.load(FIXTURE / "expected_logits.npz"))
    # b.png's text-only prompt: now as the old code answered it alone (see the test above).
    expected["logits_1"][0], expected["scores_1"][0] = (
        expected["alone_logits_1_0"][0],
        expected["alone_scores_1_0"][0],
    )
    for k, item in enumerate(read_manifest(FIXTURE / "manifest.json")):
        result = segment(model, read_rgb(item.path), item.prompts)
        torch.testing.assert_close(
            result.logits, torch.from_numpy(expected[f"logits_{k}"]), atol=1e-4, rtol=1e-5
        )
        torch.testing.assert_close(
            result.scores, torch.from_numpy(expected[f"scores_{k}"]), atol=1e-5, rtol=1e-5
        )


def test_training_batch_gives_the_same_loss_and_logits():
    module = _model()
    dm = ShapesDataModule(num_train=3, num_val=2, num_test=2, num_workers=0, encoder="beit3_tiny",
                          backend="sam_tiny")  # fmt: skip
    dataset = dm.train_dataset()
    batch = dm.builder([dataset.sample(i, 0) for i in range(len(dataset))])
    expected = json.loads((FIXTURE / "expected.json").read_text())
    with torch.no_grad():
        logits = [p.logits for p in decode(module.model, batch)]
    assert batch.texts == expected["texts"]
    terms = mask_losses(logits, batch.masks)
    for name, value in expected["loss_terms"].items():
        assert abs(float(terms[name]) - value) < 1e-5
    sums = [float(lg.double().sum()) for lg in logits]
    np.testing.assert_allclose(sums, expected["logit_sums"], rtol=1e-5)
