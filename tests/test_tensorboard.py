"""TensorBoard logging of a short fit: scalars, mask overlays, the paper's Figure 5 attention view and
the hyperparameters with their ``hp/`` metrics; and the attention hook against the attention itself."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import evf
from evf.datamodules import ShapesDataModule
from evf.encoders.beit3 import layers
from evf.module import EVFSAMModule


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    L.seed_everything(0)
    root = tmp_path_factory.mktemp("tb")
    module = EVFSAMModule("beit3_tiny", "sam_tiny", log_images_every_n_steps=1, num_logged_images=3)
    data = ShapesDataModule(num_train=2, num_val=1, batch_size=1, eval_batch_size=1, num_workers=0)
    logger = TensorBoardLogger(root, name="run")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=1, log_every_n_steps=1, num_sanity_val_steps=0,
        logger=logger, callbacks=[LearningRateMonitor("step")], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    accumulator = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_include_losses_lr_and_metrics_per_split(events):
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/bce", "train/dice", "val/shapes/val/ciou", "val/shapes/val/giou"}
    assert expected <= scalars
    assert any(tag.startswith("lr-AdamW") for tag in scalars)  # one per parameter group
    assert {"hp/val/shapes/val/ciou", "hp/val/shapes/val/giou"} <= scalars
    (value,) = [e.value for e in events.Scalars("hp/val/shapes/val/ciou") if e.value == e.value]  # not NaN
    assert value == events.Scalars("val/shapes/val/ciou")[-1].value


def test_overlays_and_attention_images_are_logged_in_training_and_validation(events):
    images = set(events.Tags()["images"])
    assert {"train/overlays", "train/attention", "val/overlays", "val/attention"} <= images
    attention = events.Images("val/attention")[-1]
    assert attention.width > 0 and attention.height > 0


def test_hyperparameters_are_logged_with_the_hp_metrics(events):
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics == {"hp/val/shapes/val/ciou", "hp/val/shapes/val/giou", "hp/val/ciou", "hp/val/giou"}
    hparams = {h.name for h in experiment.hparam_infos}
    assert {"encoder", "backend", "optim/lr", "trainable/image_encoder", "loss/dice"} <= hparams
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["encoder"].string_value == "beit3_tiny"


def _recording_sdpa(calls):
    def sdpa(q, k, v, attn_mask=None):
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = scores.softmax(-1)
        calls.append(probs)
        return probs @ v

    return sdpa


@pytest.mark.parametrize("kwargs", [{}, {"fusion_layers": 2}, {"fusion": "late", "feature": "concat"}])
def test_cls_attention_is_the_last_layers_attention_summed_over_heads(monkeypatch, kwargs):
    encoder = evf.create_encoder("beit3_tiny", **kwargs).eval()
    pixels = torch.randn(2, 3, 64, 64)
    tokens = encoder.preprocessor.tokenize(["the red circle", "a square", "the big blue star on the left"])
    ids, mask, index = tokens["input_ids"], tokens["attention_mask"], torch.tensor([0, 1, 1])
    maps = encoder.cls_attention(pixels, ids, mask, index)
    calls = []
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", _recording_sdpa(calls))
    with torch.no_grad():
        encoder(pixels, ids, mask, index)
    vision_last = calls[encoder.plan.depth - 1]  # the image pass (or the joint one) comes first
    probs = vision_last.sum(dim=1)[:, 0, 1:65]
    if probs.shape[0] != len(index):  # the late image-only pass ran once per image
        probs = probs[index]
    torch.testing.assert_close(maps, probs.unflatten(1, (8, 8)))


def test_text_fusion_has_no_image_attention():
    encoder = evf.create_encoder("beit3_tiny", fusion="text", feature="cls_text")
    tokens = encoder.preprocessor.tokenize(["a"])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert encoder.cls_attention(torch.zeros(1, 3, 64, 64), ids, mask, torch.tensor([0])) is None
