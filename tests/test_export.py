"""``evf export``: our models in the released EVF-SAM layout, read back by `evf.load_pretrained` and by
the official architecture (torchscale's BEiT3), with the unbuilt BEIT-3 tensors written as zeros."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import evf
from evf.checkpoint import CheckpointError
from evf.cli import main
from evf.encoders.beit3.tokenizer import SPM_NAME
from evf.module import EVFSAMModule
from evf.tools.export import export_release, release_state_dict
from tests.helpers import segment
from tests.release_helpers import TINY_BEIT3, perturb, torchscale_beit3

PROMPTS = ["the red circle", "the small blue square on the left"]
IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


@pytest.mark.parametrize("backend", ["sam_tiny", "sam2_tiny", "efficient_sam_tiny"])
def test_export_then_load_pretrained_gives_identical_logits(tmp_path, backend):
    model = perturb(evf.create_model("beit3_tiny", backend), seed=1).eval()
    export_release(model, tmp_path, "beit3_tiny", backend)
    loaded = evf.load_pretrained(tmp_path, preprocessing="training")
    assert torch.equal(segment(loaded, IMAGE, PROMPTS).logits, segment(model, IMAGE, PROMPTS).logits)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["evf_encoder"], config["evf_backend"]) == ("beit3_tiny", backend)
    assert (config["hidden_size"], config["out_dim"]) == (model.encoder.feature_dim, model.backend.prompt_dim)


def test_export_cli_writes_a_lightning_checkpoint(tmp_path, capsys):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", encoder_kwargs={"drop_path": 0.1})
    perturb(module.model, seed=2)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    out = tmp_path / "export"
    main(["export", "--ckpt_path", str(tmp_path / "run.ckpt"), "--output", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", SPM_NAME, "special_tokens_map.json", "tokenizer_config.json",
    ]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["EvfSamModel"] and config["evf_encoder_kwargs"] == {"drop_path": 0.1}
    loaded = evf.load_pretrained(out)
    assert torch.equal(
        segment(loaded, IMAGE, PROMPTS).logits, segment(module.model.eval(), IMAGE, PROMPTS).logits
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / "run.ckpt"), "--output", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "already holds an export" in err and "Traceback" not in err


def test_official_tokenizer_loader_reads_the_exported_files(tmp_path):
    """EVF-SAM loads its tokenizer with ``AutoTokenizer.from_pretrained(dir, use_fast=False)``."""
    from transformers import AutoTokenizer

    model = evf.create_model("beit3_tiny", "sam_tiny")
    export_release(model, tmp_path, "beit3_tiny", "sam_tiny")
    official = AutoTokenizer.from_pretrained(str(tmp_path), padding_side="right", use_fast=False)
    ours = model.encoder.preprocessor.tokenize(PROMPTS[1:])["input_ids"][0].tolist()
    assert official(PROMPTS[1])["input_ids"] == ours


def _unbuilt_names(depth: int) -> set[str]:
    """The tensors of torchscale's BEiT3 that early fusion + the image [CLS] never reads."""
    last = f"mm_extractor.beit3.encoder.layers.{depth - 1}."
    parts = [
        "self_attn.q_proj.B", "self_attn.out_proj.B", "self_attn.inner_attn_ln.B", "final_layer_norm.B",
        "ffn.B.fc1", "ffn.B.fc2", "ffn.B.ffn_layernorm",
    ]  # fmt: skip
    names = {f"{last}{part}.{p}" for part in parts for p in ("weight", "bias")}
    names |= {f"mm_extractor.beit3.encoder.layer_norm.B.{p}" for p in ("weight", "bias")}
    return names | {"mm_extractor.beit3.vision_embed.mask_token"}


@pytest.mark.reference
def test_official_beit3_reads_the_export_strictly_and_ignores_the_zero_placeholders(tmp_path):
    model = perturb(evf.create_model("beit3_tiny", "sam_tiny"), seed=3).eval()
    state, zero_filled = release_state_dict(model)
    assert set(zero_filled) == _unbuilt_names(TINY_BEIT3["depth"])
    assert all(not state[k].any() for k in zero_filled)
    export_release(model, tmp_path, "beit3_tiny", "sam_tiny")
    written = load_file(str(tmp_path / "model.safetensors"))
    beit3 = torchscale_beit3()
    prefix = "mm_extractor.beit3."
    beit3.load_state_dict(
        {k[len(prefix) :]: v for k, v in written.items() if k.startswith(prefix)}, strict=True
    )

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    tokens = model.encoder.preprocessor.tokenize(PROMPTS)
    ids, mask, index = tokens["input_ids"], tokens["attention_mask"], torch.tensor([0, 1])
    with torch.no_grad():
        ours = model.encoder(pixels, ids, mask, index)
        official = beit3(visual_tokens=pixels[index], textual_tokens=ids, text_padding_position=mask == 0)
        torch.testing.assert_close(official["encoder_out"][:, 0], ours, atol=1e-5, rtol=1e-5)
        for name in zero_filled:  # any other values: the image [CLS] does not change
            beit3.get_parameter(name[len(prefix) :]).normal_(0.0, 1.0, generator=g)
        again = beit3(visual_tokens=pixels[index], textual_tokens=ids, text_padding_position=mask == 0)
    assert torch.equal(again["encoder_out"][:, 0], official["encoder_out"][:, 0])


@pytest.mark.parametrize(
    ("encoder_kwargs", "reason"),
    [
        ({"fusion": "late", "feature": "concat"}, "early fusion in every layer"),
        ({"fusion_layers": 2}, "early fusion in every layer"),
        ({"feature": "cls_text"}, "early fusion in every layer"),
    ],
)
def test_export_refuses_what_the_released_layout_cannot_describe(tmp_path, encoder_kwargs, reason):
    model = evf.create_model("beit3_tiny", "sam_tiny", encoder_kwargs=encoder_kwargs)
    with pytest.raises(CheckpointError, match=reason):
        export_release(model, tmp_path, "beit3_tiny", "sam_tiny", encoder_kwargs)
    assert not (tmp_path / "model.safetensors").exists()


def test_export_of_a_run_trained_from_an_embedding_cache_adds_its_sam_image_encoder(tmp_path, capsys):
    sam_weights = tmp_path / "sam_tiny.pth"
    torch.save(perturb(evf.create_backend("sam_tiny"), seed=4).sam.state_dict(), sam_weights)
    module = EVFSAMModule(
        "beit3_tiny", "sam_tiny", backend_checkpoint=str(sam_weights), use_embedding_cache=True
    )
    assert not module.model.backend.has_image_encoder
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "cached.ckpt")
    args = ["export", "--ckpt_path", str(tmp_path / "cached.ckpt"), "--output", str(tmp_path / "export")]
    with pytest.raises(SystemExit):
        main(args)
    assert "--backend_checkpoint" in capsys.readouterr().err
    main([*args, "--backend_checkpoint", str(sam_weights)])
    loaded = evf.load_pretrained(tmp_path / "export").state_dict()
    trained, sam = module.model.state_dict(), torch.load(sam_weights, weights_only=True)
    for key, value in loaded.items():
        image_encoder = key.startswith("backend.sam.image_encoder.")
        assert torch.equal(value, sam[key.removeprefix("backend.sam.")] if image_encoder else trained[key]), (
            key
        )


@pytest.mark.parametrize("backend", ["sam_tiny", "sam2_tiny", "efficient_sam_tiny"])
def test_evf_predict_on_a_run_equals_load_pretrained_of_its_export(tmp_path, backend):
    """The export records the preprocessing the run trained and predicts with (``training``);
    `load_pretrained` follows the record, so the export gives ``evf predict``'s masks."""
    from PIL import Image

    module = EVFSAMModule("beit3_tiny", backend)
    perturb(module.model, seed=3)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(IMAGE).save(images / "a.png")
    out = tmp_path / "pred"
    main(["predict", f"--ckpt_path={tmp_path / 'run.ckpt'}", "--image", str(images), "--prompt", PROMPTS[0],
          "--prompt", PROMPTS[1], f"--output={out}", "--trainer.accelerator=cpu"])  # fmt: skip
    main(["export", "--ckpt_path", str(tmp_path / "run.ckpt"), "--output", str(tmp_path / "export")])
    assert json.loads((tmp_path / "export/config.json").read_text())["evf_preprocessing"] == "training"

    records = json.loads((out / "predictions.json").read_text())
    predicted = np.stack([np.asarray(Image.open(out / r["mask"])) > 0 for r in records])
    exported = evf.load_pretrained(tmp_path / "export")
    np.testing.assert_array_equal(segment(exported, IMAGE, PROMPTS).masks.numpy(), predicted)
    torch.testing.assert_close(
        segment(exported, IMAGE, PROMPTS).logits, segment(module.model.eval(), IMAGE, PROMPTS).logits
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "images", "pred", "run.ckpt"]
    if backend != "sam_tiny":  # SAM-2 and EfficientSAM shrink images otherwise in EVF-SAM's inference.py
        official = evf.load_pretrained(tmp_path / "export", preprocessing="inference")
        large = np.random.default_rng(1).integers(0, 256, (180, 240, 3), dtype=np.uint8)
        other = segment(official, large, PROMPTS).logits
        assert not torch.equal(other, segment(exported, large, PROMPTS).logits)


def test_an_unknown_recorded_preprocessing_is_refused_naming_the_key(tmp_path):
    export_release(evf.create_model("beit3_tiny", "sam_tiny"), tmp_path, "beit3_tiny", "sam_tiny")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "evf_preprocessing": "fancy"}))
    with pytest.raises(CheckpointError, match="evf_preprocessing='fancy'"):
        evf.load_pretrained(tmp_path)
