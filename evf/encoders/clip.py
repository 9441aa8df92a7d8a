"""CLIP encoders through open_clip (Radford et al., 2021; Cherti et al., 2023): paper Table 3's
``text`` and ``late`` baselines.

open_clip builds the towers (its ``TextTransformer`` and ``VisionTransformer``, unchanged); this
module only decides which towers exist and how their embeddings become EVF's feature:

* ``fusion="text"``: the text embedding (``CLIP.encode_text``: the ``<end_of_text>`` token after
  ``ln_final``, times ``text_projection``), ``[N, embed_dim]``. No vision tower is built.
* ``fusion="late"``: ``[encode_image, encode_text]`` concatenated, ``[N, 2 * embed_dim]``; the image
  tower runs once per image.

Weights are an open_clip state dict file (``open_clip_pytorch_model.bin`` / ``.safetensors`` as
open_clip's Hugging Face exports ship them, or a training checkpoint ``{"state_dict": ...}``), read
through `evf.checkpoint` with the rule table of `open_clip_format`. OpenAI's original TorchScript
archive (``ViT-L-14.pt``) is not a state dict: export it once with
``torch.save(open_clip.load_openai_model("ViT-L-14.pt", device="cpu").state_dict(), path)``.

The tokenizer is open_clip's own BPE tokenizer, whose vocabulary ships inside the package (nothing
is downloaded). Images follow open_clip's evaluation transform: bicubic resize of the shortest side,
centre crop, the normalisation of the pretrained weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from evf.checkpoint import CheckpointFormat, Rule, load_checkpoint
from evf.encoders.base import ENCODERS, EncoderInfo, EncoderPreprocessor, MultimodalEncoder
from evf.open_clip_compat import build_open_clip_tower
from evf.preprocessing import HALF_MEAN, HALF_STD, ImageSpec

log = logging.getLogger(__name__)

Fusion = Literal["text", "late"]
PAD_ID = 0
"""open_clip pads token ids with 0 and finds ``<end_of_text>`` (the largest id) by argmax."""

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_CONFIG_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}


class CLIPEncoder(MultimodalEncoder):
    """open_clip's CLIP towers as EVF's multimodal encoder (see the module doc for the features).

    Args:
        config: an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, optional
            ``quick_gelu``), as in open_clip's ``model_configs/*.json``.
        preprocessor: tokenizer and image transform.
        fusion: ``text`` (text tower only) or ``late`` (both towers, embeddings concatenated).
    """

    def __init__(
        self, config: dict[str, Any], preprocessor: EncoderPreprocessor, fusion: Fusion = "text"
    ) -> None:
        super().__init__()
        if fusion not in get_args(Fusion):
            raise ValueError(f"CLIP supports fusion 'text' or 'late' (no joint attention), got {fusion!r}")
        unknown = sorted(set(config) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"open_clip config keys not supported by CLIPEncoder: {', '.join(unknown)}")
        self.fusion = fusion
        self.preprocessor = preprocessor
        embed_dim, quick_gelu = config["embed_dim"], config.get("quick_gelu", False)
        self.text = build_open_clip_tower("text", embed_dim, config["text_cfg"], quick_gelu)
        late = fusion == "late"
        self.visual = (
            build_open_clip_tower("vision", embed_dim, config["vision_cfg"], quick_gelu) if late else None
        )
        self.feature_dim = embed_dim * (2 if late else 1)

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """``[B,3,E,E]``, ``[N,L]``, ``[N,L]``, ``[N]`` -> ``[N, feature_dim]``.

        ``attention_mask`` is not read: CLIP's text tower is causal and pools the ``<end_of_text>``
        token, so right padding never reaches the feature.
        """
        text = self.encode_text(input_ids)
        if self.visual is None:
            return text
        return torch.cat([self.visual(pixels)[image_index], text], dim=-1)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[N,L]`` right-padded ids, ``L <= context_length`` -> ``[N, embed_dim]``, as ``CLIP.encode_text``.

        open_clip's causal mask is built for exactly ``context_length`` tokens, so shorter batches
        are padded with `PAD_ID` up to it first (what open_clip's tokenizer does).
        """
        context = self.text.context_length
        if input_ids.shape[1] > context:
            raise ValueError(f"{input_ids.shape[1]} tokens, but this CLIP reads at most {context}")
        return self.text(F.pad(input_ids, (0, context - input_ids.shape[1]), value=PAD_ID))


class CLIPTokenizer:
    """open_clip's tokenizer -> ``input_ids`` and ``attention_mask`` ``[N,L]``, L = longest expression.

    Ids are ``<start_of_text> pieces <end_of_text>``, right-padded with 0; an expression longer than
    ``max_length`` keeps its first pieces and ends with ``<end_of_text>`` (open_clip's rule; a warning
    counts them). The mask marks the tokens up to ``<end_of_text>``, found as open_clip finds it (the
    largest id), so a real piece with id 0 (``!``) is not taken for padding.
    """

    def __init__(self, open_clip_tokenizer: Any, max_length: int) -> None:
        self.max_length = max_length
        self._tokenizer = open_clip_tokenizer

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Ids per expression before truncation, ``<start_of_text>`` and ``<end_of_text>`` included."""
        return [len(self._tokenizer.encode(t)) + 2 for t in texts]

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("expected a sequence of expressions, got a single string")
        texts = list(texts)
        if not texts:
            empty = torch.zeros(0, 0, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        truncated = sum(n > self.max_length for n in self.lengths(texts))
        if truncated:
            log.warning(
                "truncated %d of %d expression(s) to %d tokens", truncated, len(texts), self.max_length
            )
        ids = self._tokenizer(texts, context_length=self.max_length)
        end = ids.argmax(dim=1)
        length = int(end.max()) + 1
        mask = torch.arange(length)[None, :] <= end[:, None]
        return {"input_ids": ids[:, :length].contiguous(), "attention_mask": mask.long()}


@dataclass(frozen=True)
class CLIPVariant:
    """An open_clip architecture plus the preprocessing of the weights it is meant for.

    Attributes:
        model: open_clip model config name (``model_configs/<model>.json``), or None with ``config``.
        pretrained: open_clip's ``(model, tag)`` of those weights, whose pretrained cfg holds the
            mean/std below (tests check both against open_clip); None for random-init variants.
        image_size: side of the square image input.
        mean, std: normalisation on [0, 1] pixels.
        config: an inline open_clip model config, for variants open_clip does not ship.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model: str | None = None
    pretrained: tuple[str, str] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> dict[str, Any]:
        if not self.model:
            return self.config
        from open_clip import get_model_config

        return get_model_config(self.model)


VARIANTS: dict[str, CLIPVariant] = {
    "clip_vit_l14_openai": CLIPVariant(
        224, OPENAI_MEAN, OPENAI_STD, model="ViT-L-14-quickgelu", pretrained=("ViT-L-14", "openai")),
    "clip_vit_l14_laion2b": CLIPVariant(
        224, HALF_MEAN, HALF_STD, model="ViT-L-14", pretrained=("ViT-L-14", "laion2b_s32b_b82k")),
    "clip_vit_h14_laion2b": CLIPVariant(
        224, OPENAI_MEAN, OPENAI_STD, model="ViT-H-14", pretrained=("ViT-H-14", "laion2b_s32b_b79k")),
    "clip_tiny": CLIPVariant(32, OPENAI_MEAN, OPENAI_STD, config=dict(
        embed_dim=32,
        vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2),
    )),
}  # fmt: skip
"""Variants: OpenAI's ViT-L/14 (QuickGELU), OpenCLIP's LAION-2B ViT-L/14 and ViT-H/14, and a tiny
random-init one for tests (the real BPE vocabulary, so its token table keeps 49,408 rows)."""


def open_clip_format(fusion: Fusion) -> CheckpointFormat:
    """open_clip's ``CLIP`` state dict -> `CLIPEncoder` built with ``fusion``.

    The text tower sits at the top level of a ``CLIP`` state dict and under ``text.`` here (the
    rename of open_clip's own ``convert_to_custom_text_state_dict``); ``visual.*`` keeps its name.
    """
    text = r"(token_embedding|positional_embedding|transformer|ln_final|text_projection)(\..+)?"
    rules = [
        Rule(r"logit_scale", None, "temperature of CLIP's contrastive loss; EVF has no contrastive loss"),
        Rule(r"logit_bias", None, "bias of a SigLIP-style contrastive loss; EVF has no contrastive loss"),
        Rule(text, r"text.\1\2"),
    ]
    if fusion == "late":
        rules.append(Rule(r"visual\.(.+)", r"visual.\1"))
    else:
        unbuilt = "vision tower: fusion='text' reads no image and does not build it"
        rules.append(Rule(r"visual\..+", None, unbuilt))
    return CheckpointFormat(name="open_clip", rules=tuple(rules))


def build_clip_tokenizer(path: str | Path | None, variant: str) -> CLIPTokenizer:
    """open_clip's tokenizer for ``variant``; CLIP's BPE vocabulary ships with open_clip, so ``path``
    must be None."""
    if path is not None:
        raise ValueError(
            f"{variant} uses the BPE vocabulary bundled with open_clip: set `tokenizer` to "
            f"null, not {str(path)!r}"
        )
    import open_clip

    spec = VARIANTS[variant]
    length = spec.model_config()["text_cfg"].get("context_length", 77)
    if spec.model:
        return CLIPTokenizer(open_clip.get_tokenizer(spec.model), length)
    return CLIPTokenizer(open_clip.SimpleTokenizer(context_length=length), length)


def _info(variant: str) -> EncoderInfo:
    spec = VARIANTS[variant]
    image = ImageSpec(
        spec.image_size,
        spec.mean,
        spec.std,
        resize="shortest_side_center_crop",
        interpolation="bicubic",
        resampler="pil",
    )
    tokenizer = partial(build_clip_tokenizer, variant=variant)
    return EncoderInfo(family="clip", image=image, build_tokenizer=tokenizer)


def _create_clip(
    variant: str,
    *,
    tokenizer: str | Path | None = None,
    checkpoint: str | Path | None = None,
    fusion: Fusion = "text",
    **overrides: Any,
) -> CLIPEncoder:
    """Build a variant, optionally loading an open_clip state dict from ``checkpoint``.

    Args:
        variant: a key of `VARIANTS`.
        tokenizer: must be None (the vocabulary ships with open_clip).
        checkpoint: open_clip state dict file; None keeps the random init.
        fusion: ``text`` or ``late``.
        **overrides: open_clip config fields replacing the variant's; ``vision_cfg`` / ``text_cfg``
            dicts update the variant's field by field (e.g. ``text_cfg={"layers": 2}``).
    """
    unknown = sorted(set(overrides) - _CONFIG_KEYS)
    if unknown:
        raise TypeError(
            f"{variant}: unknown argument(s) {', '.join(unknown)}; "
            f"overridable: {', '.join(sorted(_CONFIG_KEYS))}"
        )
    config = dict(VARIANTS[variant].model_config())
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if key in ("vision_cfg", "text_cfg") else value
    encoder = CLIPEncoder(config, EncoderPreprocessor(ENCODERS.info(variant), tokenizer), fusion=fusion)
    if checkpoint is not None:
        load_checkpoint(encoder, checkpoint, open_clip_format(fusion))
    return encoder


@ENCODERS.register("clip_vit_l14_openai", info=_info("clip_vit_l14_openai"))
def clip_vit_l14_openai(**kwargs: Any) -> CLIPEncoder:
    """OpenAI CLIP ViT-L/14, 224 px, QuickGELU (arguments: `_create_clip`)."""
    return _create_clip("clip_vit_l14_openai", **kwargs)


@ENCODERS.register("clip_vit_l14_laion2b", info=_info("clip_vit_l14_laion2b"))
def clip_vit_l14_laion2b(**kwargs: Any) -> CLIPEncoder:
    """OpenCLIP ViT-L/14 trained on LAION-2B (``laion2b_s32b_b82k``), 224 px."""
    return _create_clip("clip_vit_l14_laion2b", **kwargs)


@ENCODERS.register("clip_vit_h14_laion2b", info=_info("clip_vit_h14_laion2b"))
def clip_vit_h14_laion2b(**kwargs: Any) -> CLIPEncoder:
    """OpenCLIP ViT-H/14 trained on LAION-2B (``laion2b_s32b_b79k``), 224 px."""
    return _create_clip("clip_vit_h14_laion2b", **kwargs)


@ENCODERS.register("clip_tiny", info=_info("clip_tiny"))
def clip_tiny(**kwargs: Any) -> CLIPEncoder:
    """Tiny random-init CLIP for tests: width 32, 2 + 2 layers, 32 px images, 16 text tokens."""
    return _create_clip("clip_tiny", **kwargs)


__all__ = [
    "VARIANTS",
    "CLIPEncoder",
    "CLIPTokenizer",
    "CLIPVariant",
    "build_clip_tokenizer",
    "open_clip_format",
]
