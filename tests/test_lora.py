"""LoRA (`evf.lora`, ``model.lora``): adapters start as the base model, only they (and the projector)
train, merging them gives the same logits and a plain state dict, checkpoints with adapters resume,
``init_from`` loads a release before the adapters go in, and ``evf export`` writes the merged model."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import evf
from evf.checkpoint import CheckpointError
from evf.cli import main
from evf.datamodules import ShapesDataModule
from evf.decode import decode
from evf.lora import LoraConfig, adapter_parameters
from evf.losses import mask_losses
from evf.model import TrainableParts
from evf.module import EVFSAMModule
from evf.tools.export import export_release
from tests.helpers import segment
from tests.release_helpers import perturb

PROMPTS = ["the red circle", "the small blue square on the left"]
IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
DECODER_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")


def _loss(module: EVFSAMModule, batch) -> torch.Tensor:
    terms = mask_losses([p.logits for p in decode(module.model, batch)], batch.masks)
    return terms["bce"] + terms["dice"]


def _base_state(model: evf.EVFSAM) -> dict[str, torch.Tensor]:
    """Every tensor except the adapters, under the plain model's names."""
    return {
        k.replace(".base_layer.", "."): v.detach().clone()
        for k, v in model.state_dict().items()
        if "lora_" not in k
    }


class _Trainer:  # what configure_optimizers reads of the trainer
    estimated_stepping_batches = 10


@pytest.mark.slow
def test_adapters_start_as_the_base_model_and_only_they_and_the_projector_train(shapes_batch):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", optim={"lr": 1e-2, "weight_decay": 0.01})
    perturb(module.model, seed=1)
    before = segment(module.model.eval(), IMAGE, PROMPTS).logits
    plain = _base_state(module.model)
    attention = [
        n for n, m in module.model.encoder.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[-2] in ("q", "k", "v", "out")
    ]  # fmt: skip

    module.model.add_lora(LoraConfig(rank=4))
    module.model.set_trainable(TrainableParts.for_lora(module.model.lora))
    assert torch.equal(segment(module.model.eval(), IMAGE, PROMPTS).logits, before)  # B starts at zero
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_" in n}
    assert trainable == adapters | {n for n in trainable if n.startswith("projector.")}
    # q, k, v, out of each modality in every block (as built: the last has no text query), A and B each
    assert adapters == {f"encoder.{n}.lora_{ab}.default.weight" for n in attention for ab in "AB"}
    assert len(attention) == 4 * 2 * len(module.model.encoder.blocks) - 2
    in_optimizer = {id(p) for g in module._param_groups() for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in module.model.named_parameters() if n in trainable}

    module.trainer = _Trainer()
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    assert module.model.encoder.training and not module.model.backend.mask_decoder.training
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    for _ in range(3):
        optimizer.zero_grad()
        _loss(module, shapes_batch).backward()
        optimizer.step()
    for name, p in module.model.named_parameters():  # the base weights stay bit-identical
        assert torch.equal(p, start[name]) != (name in trainable), name
    assert _base_state(module.model).keys() == plain.keys()


@pytest.mark.slow
def test_merged_model_gives_the_same_logits_and_a_plain_state_dict(shapes_batch):
    lora = LoraConfig(rank=4, dropout=0.1, decoder_targets=DECODER_ATTENTION)
    model = evf.create_model("beit3_tiny", "sam_tiny", lora=lora)
    assert model.trainable == TrainableParts.for_lora(lora)
    assert model.trainable.mask_decoder and not model.trainable.prompt_encoder
    decoder_trainable = {n for n, p in model.backend.mask_decoder.named_parameters() if p.requires_grad}
    assert decoder_trainable and all(".lora_" in n for n in decoder_trainable)
    model.train()  # the decoder has adapters: it trains; the prompt encoder is frozen
    assert model.backend.mask_decoder.training and not model.backend.prompt_encoder.training
    perturb(model, seed=2)  # every adapter non-zero, as after training
    model.eval()
    unmerged = segment(model, IMAGE, PROMPTS).logits
    with torch.no_grad():
        features = model.encoder(
            shapes_batch.encoder_pixels,
            shapes_batch.input_ids,
            shapes_batch.attention_mask,
            shapes_batch.image_index,
        )
    model.merge_lora()
    assert model.lora is None and not adapter_parameters(model)
    torch.testing.assert_close(segment(model, IMAGE, PROMPTS).logits, unmerged, atol=1e-5, rtol=0)
    with torch.no_grad():
        merged_features = model.encoder(
            shapes_batch.encoder_pixels,
            shapes_batch.input_ids,
            shapes_batch.attention_mask,
            shapes_batch.image_index,
        )
    torch.testing.assert_close(merged_features, features, atol=1e-5, rtol=0)
    plain = evf.create_model("beit3_tiny", "sam_tiny")
    plain.load_state_dict(model.state_dict(), strict=True)  # the same keys, nothing left over
    assert all(type(m) is torch.nn.Linear for m in model.encoder.blocks[0].attn.q.values())


def test_bad_lora_settings_are_clear_errors():
    with pytest.raises(ValueError, match="'attn.qq' matches no nn.Linear of the encoder"):
        evf.create_model("beit3_tiny", "sam_tiny", lora=LoraConfig(encoder_targets=("attn.qq",)))
    with pytest.raises(ValueError, match="trainable.mask_decoder is false"):
        evf.create_model(
            "beit3_tiny",
            "sam_tiny",
            trainable=TrainableParts(mask_decoder=False),
            lora=LoraConfig(decoder_targets=("q_proj",)),
        )
    model = evf.create_model("beit3_tiny", "sam_tiny", lora=LoraConfig(rank=2))
    with pytest.raises(ValueError, match="trainable.encoder must be true"):
        model.set_trainable(TrainableParts(encoder=False))
    with pytest.raises(ValueError, match="already"):
        model.add_lora(LoraConfig())
    with pytest.raises(ValueError, match="no targets"):
        LoraConfig(encoder_targets=())
    with pytest.raises(CheckpointError, match="merge them"):
        export_release(model, "unused", "beit3_tiny", "sam_tiny")


def test_full_fine_tuning_still_trains_whole_parts_and_lora_can_train_sam_in_full():
    full = EVFSAMModule("beit3_tiny", "sam_tiny")
    assert full.model.lora is None and all(p.requires_grad for p in full.model.encoder.parameters())
    both = EVFSAMModule(
        "beit3_tiny",
        "sam_tiny",
        lora=LoraConfig(rank=2),
        trainable=TrainableParts(mask_decoder=True, prompt_encoder=False),
    )
    assert all(p.requires_grad for p in both.model.backend.mask_decoder.parameters())
    encoder_trainable = [n for n, p in both.model.encoder.named_parameters() if p.requires_grad]
    assert encoder_trainable and all(".lora_" in n for n in encoder_trainable)
    assert both.hparams.lora["rank"] == 2 and both.hparams.trainable["mask_decoder"]


@pytest.mark.slow
def test_init_from_loads_the_release_strictly_before_the_adapters(tmp_path):
    released = perturb(evf.create_model("beit3_tiny", "sam_tiny"), seed=3).eval()
    export_release(released, tmp_path / "release", "beit3_tiny", "sam_tiny")
    module = EVFSAMModule("beit3_tiny", "sam_tiny", init_from=tmp_path / "release", lora=LoraConfig(rank=4))
    base = _base_state(module.model)
    reference = released.state_dict()
    assert base.keys() == reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in base.items())
    assert torch.equal(
        segment(module.model.eval(), IMAGE, PROMPTS).logits, segment(released, IMAGE, PROMPTS).logits
    )


def _fit(module: EVFSAMModule, out, max_steps: int, ckpt=None) -> EVFSAMModule:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
        num_sanity_val_steps=0, default_root_dir=out,
        callbacks=[ModelCheckpoint(dirpath=out, every_n_train_steps=2, save_top_k=-1)],
    )  # fmt: skip
    data = ShapesDataModule(num_train=4, num_val=2, batch_size=2, eval_batch_size=2, num_workers=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return module


def _lora_module() -> EVFSAMModule:
    torch.manual_seed(0)
    return EVFSAMModule(
        "beit3_tiny",
        "sam_tiny",
        lora=LoraConfig(rank=4, dropout=0.0, decoder_targets=("q_proj", "v_proj")),
        optim={"lr": 1e-2},
        num_logged_images=0,
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 4-step LoRA run on shapes, with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("lora_run")
    return _fit(_lora_module(), out, max_steps=4), out


@pytest.mark.slow
def test_a_checkpoint_with_adapters_resumes_to_the_same_weights(lora_run, tmp_path):
    full, out = lora_run
    resumed = _fit(_lora_module(), tmp_path, max_steps=4, ckpt=next(out.glob("*step=2.ckpt")))
    for name, p in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], p), name
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in full.model.named_parameters())
    # rebuilt from the checkpoint's hparams alone; a model without lora refuses it
    loaded = EVFSAMModule.load_from_checkpoint(next(out.glob("*step=4.ckpt")), map_location="cpu")
    assert loaded.model.lora == full.model.lora
    with pytest.raises(CheckpointError, match="model.lora: null"):
        EVFSAMModule.load_from_checkpoint(next(out.glob("*step=4.ckpt")), map_location="cpu", lora=None)


@pytest.mark.slow
def test_evf_export_of_a_lora_checkpoint_loads_back_with_equal_logits(lora_run, tmp_path, capsys):
    full, out = lora_run
    ckpt = next(out.glob("*step=4.ckpt"))
    main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "export")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    layers = sum(n.endswith("lora_A.default.weight") for n, _ in full.model.named_parameters())
    assert line.startswith(f"evf export: wrote {tmp_path / 'export'} (")
    assert f", {layers} LoRA-adapted" in line
    loaded = evf.load_pretrained(tmp_path / "export", preprocessing="training")
    unmerged = EVFSAMModule.load_from_checkpoint(ckpt, map_location="cpu").model.eval()
    assert unmerged.lora is not None
    torch.testing.assert_close(
        segment(loaded, IMAGE, PROMPTS).logits, segment(unmerged, IMAGE, PROMPTS).logits, atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_the_finetune_recipe_trains_adapters_and_projector_at_the_papers_batch():
    from pathlib import Path

    from evf.cli import EVFCLI

    recipe = Path(__file__).resolve().parents[1] / "configs/recipes/finetune_custom.yaml"
    on_cpu = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    with torch.device("meta"):  # full size, no weights allocated
        cli = EVFCLI(args=["--config", str(recipe), *on_cpu], run=False)
    model = cli.model.model
    assert (cli.model.hparams.encoder, cli.model.hparams.backend) == ("beit3_large", "sam_vit_h")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("projector.") for n in trainable)
    assert any(n.startswith("encoder.blocks.23.attn.v.vision.lora_") for n in trainable)
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.datamodule.batch_size * cli.trainer.accumulate_grad_batches == 128
    assert [s.rate for s in cli.datamodule.specs["train"]] == [0.8, 0.2]
