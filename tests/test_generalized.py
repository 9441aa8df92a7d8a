"""Generalized referring segmentation: the presence head ("it isn't there"), multi-target expressions
("all of them"), ReLA's gRefCOCO metrics, and the shapes dataset's no-target / multi-target kinds."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import evf
from evf.checkpoint import CheckpointError
from evf.cli import main
from evf.datamodules import ShapesDataModule
from evf.datamodules.shapes import ShapesDataset
from evf.datamodules.shapes.expressions import COLOURS, SHAPES
from evf.datamodules.shapes.generalized import MULTI_TARGET_KINDS, NO_TARGET_KINDS
from evf.metrics import ReferringIoU, pooled
from evf.module import EVFSAMModule
from evf.prediction import PredictionWriter
from evf.prompts import Prompt
from evf.tools.export import export_release
from tests.helpers import segment
from tests.release_helpers import perturb

IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
CPU = ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0"]


# ---- metrics: ReLA's refer_evaluation.py, written out here as its loop ---------------------------
def _rela(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """ReLA's evaluation of (prediction, ground truth) pairs, "predicted no-target" being an empty
    prediction."""
    acc_i = acc_u = acc_iou = 0.0
    pr = {0.7: 0, 0.8: 0, 0.9: 0}
    nt = {"TP": 0, "TN": 0, "FP": 0, "FN": 0}
    not_empty = 0
    for pred, gt in zip(preds, gts, strict=True):
        pred_nt, gt_nt = not pred.any(), not gt.any()
        inter, union = np.logical_and(pred, gt).sum(), np.logical_or(pred, gt).sum()
        if gt_nt:
            if pred_nt:
                nt["TP"] += 1
                acc_iou += 1
            else:
                nt["FN"] += 1
                acc_u += union
        else:
            if pred_nt:
                nt["FP"] += 1
                inter = 0
            else:
                nt["TN"] += 1
            iou = 0.0 if union == 0 else inter / union
            acc_iou, acc_i, acc_u, not_empty = acc_iou + iou, acc_i + inter, acc_u + union, not_empty + 1
            for t in pr:
                pr[t] += iou >= t
    out = {"ciou": acc_i / acc_u, "giou": acc_iou / len(gts)}
    out.update({f"pr@{t}": count / not_empty for t, count in pr.items()})
    out["t_acc"] = nt["TN"] / (nt["TN"] + nt["FP"])
    out["n_acc"] = nt["TP"] / (nt["TP"] + nt["FN"])
    return out


def _random_cases(seed: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n):
        gt = rng.random((12, 16)) < 0.3 if rng.random() < 0.6 else np.zeros((12, 16), bool)
        if rng.random() < 0.3:
            pred = np.zeros_like(gt)
        elif rng.random() < 0.3:
            pred = gt.copy()  # exact: counts for every Pr@
        else:
            pred = gt ^ (rng.random(gt.shape) < 0.1)
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def test_referring_iou_computes_relas_grefcoco_metrics():
    preds, gts = _random_cases(0, 60)
    metric = ReferringIoU()
    for start in range(0, 60, 7):  # images of several expressions each
        chunk = slice(start, start + 7)
        metric.update(torch.as_tensor(np.stack(preds[chunk])), torch.as_tensor(np.stack(gts[chunk])))
    ours = {k: float(v) for k, v in metric.compute().items()}
    reference = _rela(preds, gts)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_metric_shards_merge_to_the_whole_as_under_ddp():
    preds, gts = _random_cases(1, 40)
    shards = [ReferringIoU(), ReferringIoU()]
    for i, (p, g) in enumerate(zip(preds, gts, strict=True)):
        shards[i % 2].update(torch.as_tensor(p[None]), torch.as_tensor(g[None]))
    whole = ReferringIoU()
    whole.update(torch.as_tensor(np.stack(preds)), torch.as_tensor(np.stack(gts)))
    merged, expected = pooled(shards).compute(), whole.compute()
    assert merged.keys() == expected.keys() and all(torch.equal(merged[k], expected[k]) for k in expected)


def test_without_no_target_expressions_there_is_no_n_acc():
    metric = ReferringIoU()
    target = torch.ones(2, 4, 4, dtype=torch.bool)
    metric.update(torch.stack([target[0], torch.zeros_like(target[0])]), target)
    result = metric.compute()
    assert "n_acc" not in result and float(result["t_acc"]) == 0.5 and float(result["pr@0.9"]) == 0.5


# ---- the presence head through the one decode path --------------------------------------------
def _presence_model(bias: float) -> evf.EVFSAM:
    model = perturb(evf.create_model("beit3_tiny", "sam_tiny", presence=True), seed=3).eval()
    with torch.no_grad():  # a known answer: the last layer's output is its bias alone
        model.presence_head[2].weight.zero_()
        model.presence_head[2].bias.fill_(bias)
    return model


def test_a_model_without_presence_head_answers_as_before():
    model = perturb(evf.create_model("beit3_tiny", "sam_tiny"), seed=3).eval()
    predictor = evf.Predictor(model, presence_threshold=1.0)
    predictor.set_image(IMAGE)
    result = predictor.predict(["the red circle", "the blue square"])
    assert result.presence_logits is None
    assert torch.equal(result.presence, torch.ones(2)) and result.present.all()
    assert torch.equal(result.masks, result.logits > 0)  # presence never empties a mask here


@pytest.mark.parametrize("bias, present", [(-4.0, False), (4.0, True)])
def test_presence_below_the_threshold_empties_the_mask(bias, present):
    model = _presence_model(bias)
    predictor = evf.Predictor(model)
    predictor.set_image(IMAGE)
    result = predictor.predict(["the red circle", Prompt(points=((30, 40),))])
    probability = torch.sigmoid(torch.tensor(bias))
    assert torch.allclose(result.presence, torch.tensor([probability, 1.0]))  # points-only: there
    assert result.present.tolist() == [present, True]
    assert torch.equal(result.masks[0], (result.logits[0] > 0) & present)
    assert torch.equal(result.masks[1], result.logits[1] > 0)
    always = evf.Predictor(model, presence_threshold=0.0)
    always.set_image(IMAGE)
    assert always.predict("the red circle").present.all()


def test_presence_threshold_outside_zero_one_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="presence_threshold must be in"):
        evf.Predictor(_presence_model(0.0), presence_threshold=1.5)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.presence=true", "--model.presence_threshold=1.5", "--trainer.max_steps=1"])
    assert exit_info.value.code == 2 and "presence_threshold" in capsys.readouterr().err


def test_predictions_json_says_present_with_the_probability_and_lists_instances(tmp_path):
    two_blobs = np.zeros((1, 20, 30), dtype=bool)
    two_blobs[0, 2:6, 2:6], two_blobs[0, 10:18, 15:28] = True, True
    prediction = evf.Prediction(
        logits=torch.as_tensor(two_blobs).float(),
        masks=torch.as_tensor(two_blobs),
        scores=torch.tensor([0.9]),
        present=torch.tensor([True]),
        presence_logits=torch.tensor([2.0]),
    )
    writer = PredictionWriter(tmp_path)
    writer.start()
    writer.add(np.zeros((20, 30, 3), np.uint8), "img.png", [Prompt("all the squares")], prediction)
    writer.finish()
    (record,) = json.loads((tmp_path / "predictions.json").read_text())
    assert record["present"] is True and record["presence"] == pytest.approx(
        float(torch.sigmoid(torch.tensor(2.0)))
    )
    assert [i["area"] for i in record["instances"]] == [104, 16]  # largest first
    union = sum(mask_utils.decode(i["rle"]) for i in record["instances"])
    assert np.array_equal(union.astype(bool), two_blobs[0])


# ---- training: the presence loss, and the mask losses on no-target expressions -------------------
def _no_target_batch():
    dm = ShapesDataModule(num_train=2, no_target_rate=0.99, batch_size=2, num_workers=0)
    dataset = dm.train_dataset()
    samples = [dataset.sample(i, 0) for i in range(2)]
    assert all(not s.masks.any() for s in samples)
    return dm.builder(samples)


@pytest.mark.parametrize("no_target_masks, decoder_learns", [("skip", False), ("empty", True)])
def test_no_target_expressions_train_the_presence_head_and_masks_as_configured(
    no_target_masks, decoder_learns
):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", presence=True, no_target_masks=no_target_masks)
    module.log = module.log_dict = lambda *a, **k: None  # no trainer attached
    module.log_images_every_n_steps = 0
    loss = module.training_step(_no_target_batch(), 0)
    loss.backward()
    head = module.model.presence_head[2].weight.grad
    decoder = module.model.backend.mask_decoder.output_upscaling[0].weight.grad
    assert head is not None and head.abs().sum() > 0
    assert (decoder is not None and decoder.abs().sum() > 0) == decoder_learns


# ---- checkpoints: a presence head where the model has none, and the reverse ----------------------
def _checkpoint(tmp_path, presence: bool):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", presence=presence)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    path = tmp_path / f"presence_{presence}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("saved", [True, False])
def test_a_checkpoint_and_a_model_that_disagree_on_the_presence_head_are_a_clear_error(tmp_path, saved):
    path = _checkpoint(tmp_path, saved)
    loaded = EVFSAMModule.load_from_checkpoint(path)  # its own hparams: they agree
    assert loaded.model.has_presence == saved
    with pytest.raises(CheckpointError, match="presence head"):
        EVFSAMModule.load_from_checkpoint(path, presence=not saved)


def test_the_command_line_sets_a_trained_models_presence_threshold(tmp_path, capsys):
    path = _checkpoint(tmp_path, True)
    image = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(IMAGE).save(image)
    records = {}
    for threshold in ("0.0", "1.0"):
        out = tmp_path / threshold
        main(["predict", f"--ckpt_path={path}", f"--presence_threshold={threshold}", "--image", str(image),
              "--prompt", "the red circle", f"--output={out}", "--trainer.accelerator=cpu",
              "--trainer.logger=false", "--trainer.enable_progress_bar=false"])  # fmt: skip
        (records[threshold],) = json.loads((out / "predictions.json").read_text())
    assert records["0.0"]["present"] is True and records["1.0"]["present"] is False
    assert records["1.0"]["area"] == 0 and records["1.0"]["instances"] == []
    assert records["0.0"]["presence"] == records["1.0"]["presence"] < 1.0
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", f"--ckpt_path={path}", "--presence_threshold=1.5", *CPU, "--trainer.logger=false"])
    assert exit_info.value.code == 2 and "presence_threshold" in capsys.readouterr().err


def test_export_keeps_the_presence_head_and_a_release_without_one_initialises_it(tmp_path):
    model = _presence_model(1.5)
    export_release(model, tmp_path / "with", "beit3_tiny", "sam_tiny")
    loaded = evf.load_pretrained(tmp_path / "with", preprocessing="training")
    a, b = segment(loaded, IMAGE, ["the red circle"]), segment(model, IMAGE, ["the red circle"])
    assert loaded.has_presence and torch.equal(a.presence_logits, b.presence_logits)
    assert torch.equal(a.logits, b.logits)
    export_release(
        perturb(evf.create_model("beit3_tiny", "sam_tiny"), 4), tmp_path / "without", "beit3_tiny", "sam_tiny"
    )
    module = EVFSAMModule("beit3_tiny", "sam_tiny", presence=True, init_from=tmp_path / "without")
    assert module.model.has_presence  # the head starts from init, everything else from the release
    with pytest.raises(CheckpointError, match="evf_presence"):
        EVFSAMModule("beit3_tiny", "sam_tiny", init_from=tmp_path / "with")


# ---- the shapes dataset's generalized expressions ------------------------------------------------
def _groups(scene):
    return {
        "colour": {o.colour for o in scene.objects},
        "shape": {o.shape for o in scene.objects},
        "pair": {(o.colour, o.shape) for o in scene.objects},
    }


def test_shapes_no_target_expressions_name_nothing_and_multi_target_ones_name_every_member():
    dataset = ShapesDataset("val", 20, max_expressions=None, no_target_rate=0.2, multi_target_rate=0.2)
    seen = set()
    for index in range(20):
        scene, sample = dataset.scene(index), dataset.sample(index, 0)
        present = _groups(scene)
        for text, kind, mask in zip(sample.texts, sample.kinds, sample.masks, strict=True):
            seen.add(kind)
            words = text.split()
            if kind in NO_TARGET_KINDS:
                assert not mask.any(), text
                if kind == "absent_colour":
                    assert words[1] not in present["colour"], text
                if kind == "absent_shape":
                    assert words[1] not in present["shape"], text
                if kind == "absent_colour_shape":
                    assert words[1] in present["colour"] and words[2] in present["shape"]
                    assert (words[1], words[2]) not in present["pair"], text
            elif kind in MULTI_TARGET_KINDS:
                covered = [i for i, m in enumerate(scene.masks) if (m & mask).any()]
                assert len(covered) >= 2 and np.array_equal(scene.masks[covered].any(0), mask), text
                colours = {w for w in words if w in COLOURS}
                shapes = {w.removesuffix("s") for w in words if w.removesuffix("s") in SHAPES}
                members = [o for o in scene.objects if {o.colour} >= colours and {o.shape} >= shapes]
                assert len(members) == len(covered), text  # every member of the group, nothing else
            else:
                assert mask.any()
    assert seen >= set(NO_TARGET_KINDS) | set(MULTI_TARGET_KINDS)


def test_shapes_rates_set_the_shares_and_zero_rates_change_nothing():
    plain = ShapesDataset("train", 30, seed=2)
    general = ShapesDataset("train", 30, seed=2, no_target_rate=0.25, multi_target_rate=0.25)
    kinds = [k for i in range(30) for e in range(3) for k in general.sample(i, e).kinds]
    share = {
        "no": np.mean([k in NO_TARGET_KINDS for k in kinds]),
        "multi": np.mean([k in MULTI_TARGET_KINDS for k in kinds]),
    }
    assert 0.15 < share["no"] < 0.35 and 0.15 < share["multi"] < 0.35, share
    zero = ShapesDataset("train", 30, seed=2, no_target_rate=0.0, multi_target_rate=0.0)
    for i in range(30):  # the single-target draws do not move
        a, b = plain.sample(i, 1), zero.sample(i, 1)
        assert a.texts == b.texts and np.array_equal(a.masks, b.masks)
    with pytest.raises(ValueError, match="no_target_rate"):
        ShapesDataModule(no_target_rate=0.6, multi_target_rate=0.5)


@pytest.mark.slow
def test_fit_with_presence_reports_relas_metrics_per_split_and_kind(tmp_path):
    run = tmp_path / "run"
    main(["fit", "--model.encoder=beit3_tiny", "--model.backend=sam_tiny", "--model.presence=true", *CPU,
          "--trainer.log_every_n_steps=1", "--trainer.max_steps=2", "--data.init_args.num_train=4",
          "--data.init_args.num_val=3", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
          "--data.init_args.no_target_rate=0.2", "--data.init_args.multi_target_rate=0.2",
          f"--trainer.default_root_dir={run}", "--trainer.logger=TensorBoardLogger",
          f"--trainer.logger.init_args.save_dir={run}"])  # fmt: skip
    results = json.loads(next(run.rglob("results_validate.json")).read_text())
    split = results["metrics"]["shapes/val"]
    assert {"ciou", "giou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"} <= split.keys()
    assert "Generalized referring" in next(run.rglob("results_validate.md")).read_text()
    state = torch.load(next(run.rglob("*.ckpt")), weights_only=True)
    assert any(k.startswith("model.presence_head.") for k in state["state_dict"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/presence", "val/shapes/val/n_acc", "val/shapes/val/multi_all/ciou"} <= tags
    assert any(tag.startswith("val/shapes/val/absent_") and tag.endswith("/n_acc") for tag in tags)


def test_an_empty_target_in_a_dataset_of_single_targets_is_an_error_or_a_counted_skip():
    from evf.datamodules.common import DataError, FileDataset
    from evf.datamodules.sample import Sample

    class OneImage(FileDataset):  # every file format goes through FileDataset._sample
        def __init__(self, kind: str, **kwargs) -> None:
            super().__init__("one", **kwargs)
            self.kind = kind

        def __len__(self) -> int:
            return 1

        def load(self, index, rng):
            masks = np.zeros((2, 8, 8), dtype=bool)
            masks[0, 2:4, 2:4] = True
            return Sample(
                np.zeros((8, 8, 3), np.uint8), masks, ["the dot", "the cat"], "img-0", ["", self.kind]
            )

    with pytest.raises(DataError, match="'the cat' has an empty mask but is not a no-target expression"):
        OneImage("single_target", max_expressions=None).sample(0, 0)
    skipped = OneImage("single_target", max_expressions=None, on_bad_sample="skip").sample(0, 0)
    assert "the cat" in skipped.reason
    assert OneImage("no_target", max_expressions=None).sample(0, 0).texts == ["the dot", "the cat"]
