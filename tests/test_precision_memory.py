"""Precision, memory and compilation options: bf16-mixed, activation checkpointing, torch.compile,
and a frozen image encoder that keeps no activations."""

import lightning as L
import pytest
import torch

import evf
from evf.batch import Batch
from evf.datamodules import ShapesDataModule
from evf.decode import decode
from evf.losses import mask_losses
from evf.module import EVFSAMModule


def _loss(model: evf.EVFSAM, batch: Batch) -> torch.Tensor:
    logits = [p.logits for p in decode(model, batch)]
    terms = mask_losses(logits, batch.masks)
    return terms["bce"] + terms["dice"]


class _LossLog(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_tiny_fit_runs_in_bf16_mixed_on_cpu():
    log = _LossLog()
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=2, limit_val_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[log], use_distributed_sampler=False,
    )  # fmt: skip
    data = ShapesDataModule(num_train=4, num_val=2, batch_size=2, eval_batch_size=2, num_workers=0)
    trainer.fit(EVFSAMModule("beit3_tiny", "sam_tiny", num_logged_images=0), datamodule=data)
    assert len(log.losses) == 2 and all(torch.isfinite(torch.tensor(log.losses)))


def test_activation_checkpointing_gives_the_same_gradients(shapes_batch):
    """BEIT-3 blocks recomputed in backward (with stochastic depth, whose RNG state is replayed)."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        kwargs = {"grad_checkpointing": checkpointing, "drop_path": 0.2}
        model = evf.create_model("beit3_tiny", "sam_tiny", encoder_kwargs=kwargs).train()
        torch.manual_seed(1)
        _loss(model, shapes_batch).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_compile_encoder_compiles_in_place_and_keeps_checkpoint_keys():
    plain = EVFSAMModule("beit3_tiny", "sam_tiny")
    compiled = EVFSAMModule("beit3_tiny", "sam_tiny", compile_encoder=True)
    assert compiled.model.encoder._compiled_call_impl is not None
    assert plain.model.encoder._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.slow
def test_encoder_traces_as_one_graph(shapes_batch):
    """What `compile_encoder` compiles has no graph break (each would split the compiled program)."""
    encoder = evf.create_encoder("beit3_tiny", grad_checkpointing=True).train()
    inputs = [
        getattr(shapes_batch, k) for k in ("encoder_pixels", "input_ids", "attention_mask", "image_index")
    ]
    explained = torch._dynamo.explain(encoder)(*inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_frozen_image_encoder_keeps_no_activations(shapes_batch):
    model = evf.create_model("beit3_tiny", "sam_tiny").train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        features = model.encode_images(shapes_batch.sam_pixels)
    assert saved == [] and all(f.grad_fn is None for f in features.values())
    trains = evf.create_model(
        "beit3_tiny", "sam_tiny", trainable=evf.TrainableParts(image_encoder=True)
    ).train()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        trains.encode_images(shapes_batch.sam_pixels)
    assert saved  # a training image encoder does keep them


def test_inference_mode_features_cannot_train_the_sam2_decoder(shapes_batch):
    """Why `EVFSAM.encode_images` uses no_grad, not inference_mode: SAM 2's decoder convolves the
    features with trainable weights, and autograd refuses to save inference tensors for backward."""
    model = evf.create_model("beit3_tiny", "sam2_tiny").train()
    with torch.inference_mode():  # sam_tiny's 128 px pixels: the size sam2_tiny reads too
        features = model.backend.encode_image(shapes_batch.sam_pixels)
    tokens = torch.randn(len(shapes_batch.image_index), 1, model.backend.prompt_dim, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensors cannot be saved for backward"):
        model.backend.decode(features, shapes_batch.image_index, tokens).logits.sum().backward()
