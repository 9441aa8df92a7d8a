"""CLIP through open_clip: parity with open_clip's own model, checkpoint formats, sizes, preprocessing."""

import logging

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import evf
from evf.checkpoint import CheckpointError
from evf.encoders import ENCODERS, build_preprocessor
from evf.encoders.clip import VARIANTS

TEXTS = ["the red circle!", "a small blue square on the left of the big one", "cat"]
FULL_SIZE = ["clip_vit_l14_openai", "clip_vit_l14_laion2b", "clip_vit_h14_laion2b"]


@pytest.fixture(scope="module")
def reference() -> open_clip.CLIP:
    """open_clip's own CLIP with the tiny variant's config and random weights."""
    torch.manual_seed(0)
    return open_clip.CLIP(**VARIANTS["clip_tiny"].config).eval()


def _save(state: dict, path, layout: str) -> None:
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "training":  # open_clip's training checkpoint: epoch + DDP-prefixed state dict
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)


def _inputs(seed: int = 0):
    tokens = build_preprocessor("clip_tiny").tokenize(TEXTS)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return pixels, tokens["input_ids"], tokens["attention_mask"], torch.tensor([0, 1, 1])


@pytest.mark.parametrize("layout", ["bin", "training", "safetensors"])
def test_late_features_equal_open_clip_encode_image_and_text(reference, tmp_path, layout):
    path = tmp_path / f"open_clip_model.{'safetensors' if layout == 'safetensors' else 'bin'}"
    _save(reference.state_dict(), path, layout)
    encoder = evf.create_encoder("clip_tiny", fusion="late", checkpoint=path).eval()
    pixels, ids, mask, index = _inputs()
    with torch.no_grad():
        ours = encoder(pixels, ids, mask, index)
        text = reference.encode_text(open_clip.SimpleTokenizer(context_length=16)(TEXTS))
        image = reference.encode_image(pixels)[index]
    assert ours.shape == (3, 64) and encoder.feature_dim == 64
    torch.testing.assert_close(ours, torch.cat([image, text], dim=-1), atol=1e-5, rtol=1e-5)


def test_text_mode_drops_the_vision_tower_of_a_full_checkpoint(reference, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    encoder = evf.create_encoder("clip_tiny", fusion="text", checkpoint=path).eval()
    assert encoder.visual is None and not any(k.startswith("visual") for k in encoder.state_dict())
    _, ids, mask, index = _inputs()
    with torch.no_grad():
        ours = encoder(torch.empty(0), ids, mask, index)
        expected = reference.encode_text(open_clip.SimpleTokenizer(context_length=16)(TEXTS))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_unknown_and_missing_keys_are_named(reference, tmp_path):
    state = reference.state_dict()
    path = tmp_path / "extra.bin"
    torch.save({**state, "text_decoder.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="text_decoder.weight"):
        evf.create_encoder("clip_tiny", fusion="text", checkpoint=path)
    path = tmp_path / "missing.bin"
    torch.save({k: v for k, v in state.items() if k != "ln_final.weight"}, path)
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): text.ln_final.weight"):
        evf.create_encoder("clip_tiny", fusion="late", checkpoint=path)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_counts_equal_open_clip_over_the_towers_used(name):
    spec = VARIANTS[name]
    with torch.device("meta"):
        ref = open_clip.create_model(spec.model, pretrained=None, device="meta")
        counts = {f: _count(evf.create_encoder(name, fusion=f)) for f in ("text", "late")}
    total = _count(ref) - ref.logit_scale.numel()  # the loss temperature is dropped
    assert counts["late"] == total
    assert counts["text"] == total - _count(ref.visual)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", FULL_SIZE)
def test_variant_matches_open_clip_tables(name):
    spec = VARIANTS[name]
    pretrained = open_clip.get_pretrained_cfg(*spec.pretrained)
    assert (spec.mean, spec.std) == (tuple(pretrained["mean"]), tuple(pretrained["std"]))
    assert (pretrained["interpolation"], pretrained["resize_mode"]) == ("bicubic", "shortest")
    config = open_clip.get_model_config(spec.model)
    assert config.get("quick_gelu", False) == pretrained.get("quick_gelu", False)
    assert config["vision_cfg"]["image_size"] == spec.image_size == ENCODERS.info(name).image.size


@pytest.mark.parametrize("size", [(50, 70), (90, 40)])
def test_image_transform_equals_open_clip_eval_transform(size):
    spec = VARIANTS["clip_vit_l14_laion2b"]
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    transform = open_clip.image_transform(
        224, is_train=False, mean=spec.mean, std=spec.std, resize_mode="shortest", interpolation="bicubic"
    )
    ours = build_preprocessor("clip_vit_l14_laion2b").transform_image(image)
    torch.testing.assert_close(ours, transform(Image.fromarray(image)), atol=1e-5, rtol=0)


def test_tokenizer_matches_open_clip_and_masks_up_to_end_of_text(caplog):
    tokenizer = build_preprocessor("clip_vit_l14_openai").tokenizer
    out = tokenizer(TEXTS)
    expected = open_clip.get_tokenizer("ViT-L-14")(TEXTS)
    length = out["input_ids"].shape[1]
    assert torch.equal(out["input_ids"], expected[:, :length]) and not expected[:, length:].any()
    assert out["attention_mask"].tolist()[2] == [1, 1, 1] + [0] * (length - 3)  # <sot> cat <eot>
    assert out["attention_mask"][0].sum() == (out["input_ids"][0] == 256).sum() + 5  # "!" (id 256) is a token
    with caplog.at_level(logging.WARNING):
        long = tokenizer(["word " * 100])
    assert long["input_ids"].shape == (1, 77) and long["input_ids"][0, -1] == 49407  # <end_of_text> kept
    assert "truncated 1" in caplog.text


def test_tokenizer_path_and_unknown_options_are_errors():
    with pytest.raises(ValueError, match="bundled with open_clip"):
        ENCODERS.info("clip_tiny").build_tokenizer("bpe.txt")
    with pytest.raises(ValueError, match="fusion"):
        evf.create_encoder("clip_tiny", fusion="early")
    with pytest.raises(TypeError, match="feature"):
        evf.create_encoder("clip_tiny", feature="cls_text")
