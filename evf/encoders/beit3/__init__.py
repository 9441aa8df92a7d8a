"""The BEIT-3 encoder family: EVF-SAM's multimodal encoder (Wang et al., 2022, via unilm/torchscale).

* `fusion`: the fusion modes and, per mode, which passes run and which parts are built (`Plan`).
* `modeling`: the multiway transformer (`BEiT3Encoder`).
* `checkpoint`: the remap of unilm's official ``.pth`` files (`UNILM_BEIT3`, `beit3_rules`).
* `tokenizer`: the XLM-R style sentencepiece tokenizer (`build_beit3_tokenizer`).
* `release`: BEIT-3 in EVF-SAM's released checkpoints (`BEIT3_RELEASE`, in every variant's info).

Variants are rows of `VARIANTS`; each registered factory hands its row to `_create_beit3`::

    encoder = create_encoder("beit3_large", tokenizer="beit3.spm", checkpoint="beit3_large_patch16_224.pth",
                             fusion="early", feature="cls_image")

Images are preprocessed as EVF-SAM's ``beit3_preprocess``: ToTensor, a bicubic square resize of the
float tensor without antialiasing, Normalize(0.5, 0.5). (EVF-SAM trained with torchvision 0.14, whose
tensor resize does not antialias, and its ``inference.py`` passes ``antialias=None``, which means
the same in every later torchvision; an antialiased resize changes the features the released
weights were trained on.)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from evf.assets import SHAPES_TOKENIZER
from evf.checkpoint import CheckpointError, load_checkpoint
from evf.encoders.base import ENCODERS, EncoderInfo, EncoderPreprocessor
from evf.encoders.beit3.checkpoint import (
    TORCHSCALE_ONLY,
    UNILM_BEIT3,
    beit3_export_rules,
    beit3_rules,
    unilm_beit3_format,
)
from evf.encoders.beit3.fusion import Feature, Fusion, plan_fusion
from evf.encoders.beit3.modeling import BEiT3Encoder
from evf.encoders.beit3.release import BEIT3_RELEASE
from evf.encoders.beit3.tokenizer import build_beit3_tokenizer
from evf.preprocessing import HALF_MEAN, HALF_STD, ImageSpec

VARIANTS: dict[str, dict[str, Any]] = {
    "beit3_base": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, vocab_size=64010),
    "beit3_large": dict(
        img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, vocab_size=64010
    ),
    "beit3_tiny": dict(
        img_size=64,
        patch_size=8,
        embed_dim=128,
        depth=4,
        num_heads=4,
        vocab_size=512,
        max_source_positions=64,
    ),
}
"""Architecture of each variant; any `BEiT3Encoder` size argument can be overridden at creation."""

_OVERRIDABLE = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "vocab_size",
    "mlp_ratio",
    "max_source_positions",
    "layernorm_eps",
    "sub_ln",
    "position_init",
)


def _info(variant: str, max_text_tokens: int, default_tokenizer: Path | None = None) -> EncoderInfo:
    image = ImageSpec(
        VARIANTS[variant]["img_size"],
        HALF_MEAN,
        HALF_STD,
        pixel_scale=1.0,
        resize="square",
        interpolation="bicubic",
        resampler="torch",
        antialias=False,
    )
    tokenizer = partial(build_beit3_tokenizer, max_length=max_text_tokens, default=default_tokenizer)
    return EncoderInfo(family="beit3", image=image, build_tokenizer=tokenizer, release=BEIT3_RELEASE)


DEFAULT_FEATURE: dict[str, Feature] = {"text": "cls_text", "late": "concat", "early": "cls_image"}


def _create_beit3(
    variant: str,
    *,
    tokenizer: str | Path | None = None,
    checkpoint: str | Path | None = None,
    fusion: Fusion = "early",
    fusion_layers: int | None = None,
    feature: Feature | None = None,
    drop_path: float = 0.0,
    grad_checkpointing: bool = False,
    **overrides: Any,
) -> BEiT3Encoder:
    """Build a variant, optionally loading unilm weights from ``checkpoint`` (strict, per fusion mode).

    Args:
        variant: a key of `VARIANTS`.
        tokenizer: sentencepiece model file or directory; built lazily on first use.
        checkpoint: unilm ``beit3_*_patch16_224.pth``; None keeps the random init.
        fusion, fusion_layers, drop_path, grad_checkpointing: see `BEiT3Encoder`.
        feature: see `BEiT3Encoder`; None takes the mode's natural one (`DEFAULT_FEATURE`:
            text -> cls_text, late -> concat, early -> cls_image, the paper's default).
        **overrides: architecture fields replacing the variant's (e.g. ``depth=2``). Without an
            explicit ``sub_ln``, a ``checkpoint`` decides it: a file without sub-LN tensors (what
            ``evf pretrain-encoder`` writes for the shipped ``beit3_tiny``) builds plain pre-norm blocks.

    Raises:
        TypeError: an override that is not an architecture field.
    """
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise TypeError(
            f"{variant}: unknown argument(s) {', '.join(unknown)}; overridable: {', '.join(_OVERRIDABLE)}"
        )
    if checkpoint is not None and "sub_ln" not in overrides and not _has_sub_ln(checkpoint):
        overrides["sub_ln"] = False
    preprocessor = EncoderPreprocessor(ENCODERS.info(variant), tokenizer)
    encoder = BEiT3Encoder(
        **{**VARIANTS[variant], **overrides},
        preprocessor=preprocessor,
        fusion=fusion,
        fusion_layers=fusion_layers,
        feature=feature or DEFAULT_FEATURE[fusion],
        drop_path=drop_path,
        grad_checkpointing=grad_checkpointing,
    )
    if checkpoint is not None:
        try:
            load_checkpoint(encoder, checkpoint, unilm_beit3_format(encoder.plan))
        except CheckpointError as error:
            raise CheckpointError(f"{error}{_sub_ln_hint(encoder, str(error))}") from None
    return encoder


def _has_sub_ln(checkpoint: str | Path) -> bool:
    """Whether a unilm-layout file holds sub-LN tensors; True when it cannot be read as one (the
    strict loader then says what is wrong with it). Memory-mapped: only the key names are read."""
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: load_checkpoint reports it properly
        return True
    keys = saved.get("model", saved) if isinstance(saved, dict) else {}
    return not isinstance(keys, dict) or any(".inner_attn_ln." in k for k in keys)


def _sub_ln_hint(encoder: BEiT3Encoder, message: str) -> str:
    """What to change when a file and the encoder disagree only about sub-LN (`BEiT3Encoder`'s ``sub_ln``)."""
    if encoder.sub_ln and "inner_norm" in message:
        return (
            "; the file has no sub-LN: build the encoder with sub_ln=False (a config's model.encoder_kwargs)"
        )
    if not encoder.sub_ln and "inner_norm" in message:
        return "; the file has BEIT-3's sub-LN: build the encoder without sub_ln=False"
    return ""


@ENCODERS.register("beit3_base", info=_info("beit3_base", max_text_tokens=128))
def beit3_base(**kwargs: Any) -> BEiT3Encoder:
    """BEIT-3 base: 768 wide, 12 layers, 12 heads, 224 px, patch 16 (arguments: `_create_beit3`)."""
    return _create_beit3("beit3_base", **kwargs)


@ENCODERS.register("beit3_large", info=_info("beit3_large", max_text_tokens=128))
def beit3_large(**kwargs: Any) -> BEiT3Encoder:
    """BEIT-3 large: 1024 wide, 24 layers, 16 heads, 224 px, patch 16 (EVF-SAM's choice)."""
    return _create_beit3("beit3_large", **kwargs)


@ENCODERS.register(
    "beit3_tiny", info=_info("beit3_tiny", max_text_tokens=62, default_tokenizer=SHAPES_TOKENIZER)
)
def beit3_tiny(**kwargs: Any) -> BEiT3Encoder:
    """Tiny random-init BEIT-3 for tests and the quickstart: 128 wide, 4 layers, 64 px, patch 8;
    its tokenizer defaults to the shapes sentencepiece model shipped in ``evf/assets``."""
    return _create_beit3("beit3_tiny", **kwargs)


__all__ = [
    "TORCHSCALE_ONLY",
    "UNILM_BEIT3",
    "VARIANTS",
    "BEiT3Encoder",
    "beit3_base",
    "beit3_export_rules",
    "beit3_large",
    "beit3_rules",
    "beit3_tiny",
    "build_beit3_tokenizer",
    "plan_fusion",
    "unilm_beit3_format",
]
