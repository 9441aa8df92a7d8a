"""ViLT through transformers (Kim et al., 2021): paper Table 3's single-stream baseline.

transformers' ``ViltModel`` runs unchanged; the fusion mode decides what it is fed. The feature is
always ViLT's pooled output (``pooler``: dense + tanh over the first token after the final
LayerNorm), ``[N, 768]`` per pass for ViLT-B/32:

* ``fusion="early"``: ViLT's normal joint pass over ``[text tokens, image patches]`` per
  expression; the pooled text ``[CLS]``.
* ``fusion="text"``: a text-only pass. ``ViltModel`` has no text-only switch, but it accepts
  ready-made ``image_embeds``: given an empty ``[N,0,D]`` tensor (and an empty pixel mask) its
  sequence is the text tokens alone, exactly as if the text embeddings were fed through its
  encoder by hand. The image embeddings (patch projection, image ``[CLS]``, patch positions) are
  not kept, so no parameter sits unused.
* ``fusion="late"``: an image-only pass once per image (an empty ``[B,0,D]`` ``inputs_embeds`` on
  the text side; the pooled image ``[CLS]``) and the text-only pass, concatenated
  ``[image, text]``, ``[N, 2 * 768]``.

ViLT's image embedding shuffles the patch tokens (``torch.multinomial`` in ``visual_embed``, so it
draws from the global RNG); the positions travel with the patches and attention ignores order, so
the output only changes by float rounding.

Deviation from ``ViltImageProcessor``: it resizes the shorter side to 384 (longer side at most 640,
multiples of 32) and pads a batch to its largest image with a ``pixel_mask``. Batches here need one
size, so every image is stretched to a 384 x 384 square (bicubic, antialiased, as its torchvision
backend resizes) and normalised with mean = std = 0.5; ViLT interpolates its patch positions to
any grid, and for a square input both transforms agree.

Weights come from a transformers directory (``save_pretrained`` of ``ViltModel`` or of a
``ViltFor*`` model such as ``dandelin/vilt-b32-mlm``): its ``config.json`` must match the variant's
architecture and its weights (``model.safetensors`` or ``pytorch_model.bin``) load strictly through
`evf.checkpoint` with the rule table of `transformers_vilt_format`. The tokenizer (BERT WordPiece,
at most 40 tokens: the rows of ViLT's text position table) is read from the same kind of directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from evf.checkpoint import CheckpointError, CheckpointFormat, Rule, load_checkpoint
from evf.encoders.base import ENCODERS, EncoderInfo, EncoderPreprocessor, MultimodalEncoder
from evf.preprocessing import HALF_MEAN, HALF_STD, ImageSpec

log = logging.getLogger(__name__)

Fusion = Literal["text", "late", "early"]
IMAGE_EMBEDDINGS = ("cls_token", "position_embeddings", "patch_embeddings")
"""Attributes of ``ViltEmbeddings`` that only embed images (``position_embeddings`` there is the
patch position table; the text one lives in ``text_embeddings``)."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ViltEncoder(MultimodalEncoder):
    """transformers' ``ViltModel`` as EVF's multimodal encoder (see the module doc for the modes).

    Args:
        config: a ``transformers.ViltConfig``.
        preprocessor: tokenizer and image transform.
        fusion: ``early``, ``text`` or ``late``.
    """

    def __init__(self, config: Any, preprocessor: EncoderPreprocessor, fusion: Fusion = "early") -> None:
        super().__init__()
        from transformers import ViltModel  # deferred: importing transformers takes seconds

        if fusion not in get_args(Fusion):
            raise ValueError(f"ViLT supports fusion 'text', 'late' or 'early', got {fusion!r}")
        self.fusion = fusion
        self.preprocessor = preprocessor
        self.vilt = ViltModel(config, add_pooling_layer=True)
        if fusion == "text":
            for name in IMAGE_EMBEDDINGS:
                delattr(self.vilt.embeddings, name)
        self.feature_dim = config.hidden_size * (2 if fusion == "late" else 1)

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """``[B,3,E,E]``, ``[N,L]``, ``[N,L]``, ``[N]`` -> ``[N, feature_dim]``."""
        if self.fusion == "early":
            images = pixels[image_index]
            return self.vilt(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=images,
                pixel_mask=_full_mask(images),
            ).pooler_output
        text = self.encode_text(input_ids, attention_mask)
        if self.fusion == "text":
            return text
        return torch.cat([self.encode_image(pixels)[image_index], text], dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only pass: ``[N,L]`` ids and mask -> pooled text ``[CLS]`` ``[N,D]``."""
        n, dim = input_ids.shape[0], self.vilt.config.hidden_size
        no_image = self.vilt.embeddings.token_type_embeddings.weight.new_zeros(n, 0, dim)
        return self.vilt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=no_image,
            pixel_mask=attention_mask.new_zeros(n, 0),
        ).pooler_output

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image-only pass: ``[B,3,E,E]`` -> pooled image ``[CLS]`` ``[B,D]``."""
        b, dim = pixels.shape[0], self.vilt.config.hidden_size
        no_text = pixels.new_zeros(b, 0, dim)
        no_text_mask = torch.zeros(b, 0, dtype=torch.long, device=pixels.device)
        return self.vilt(
            inputs_embeds=no_text,
            attention_mask=no_text_mask,
            pixel_values=pixels,
            pixel_mask=_full_mask(pixels),
        ).pooler_output


def _full_mask(pixels: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` -> ``[B,H,W]`` ones: every pixel is image, none is padding."""
    return torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long, device=pixels.device)


class ViltTokenizer:
    """BERT WordPiece ids ``[CLS] pieces [SEP]``, right-padded with ``[PAD]`` to the longest expression.

    Args:
        hf_tokenizer: a loaded transformers ``BertTokenizer``.
        max_length: most ids per expression, special tokens included (ViLT's position table: 40);
            longer expressions are truncated (``[SEP]`` kept) and a warning counts them.
    """

    def __init__(self, hf_tokenizer: Any, max_length: int) -> None:
        self.max_length = max_length
        self._hf = hf_tokenizer

    @property
    def mask_id(self) -> int:
        """``[MASK]``, the token of masked language modelling (pretraining only)."""
        return self._hf.mask_token_id

    def pieces(self) -> list[str]:
        """The piece of every id (``##`` continues a word)."""
        return self._hf.convert_ids_to_tokens(list(range(len(self._hf))))

    def special_ids(self) -> list[int]:
        """``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``."""
        return list(self._hf.all_special_ids)

    def save(self, directory: Path) -> None:
        """Write the vocabulary as BERT's ``vocab.txt`` (one piece per line, in id order) into
        ``directory``. (transformers 5's ``save_vocabulary`` writes a ``tokenizer.model`` instead.)"""
        (Path(directory) / "vocab.txt").write_text("\n".join(self.pieces()) + "\n", encoding="utf-8")

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Ids per expression before truncation, ``[CLS]`` and ``[SEP]`` included."""
        return [len(ids) for ids in self._hf(list(texts))["input_ids"]] if texts else []

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("expected a sequence of expressions, got a single string")
        texts = list(texts)
        truncated = sum(n > self.max_length for n in self.lengths(texts))
        if truncated:
            log.warning(
                "truncated %d of %d expression(s) to %d tokens", truncated, len(texts), self.max_length
            )
        enc = self._hf(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def build_vilt_tokenizer(path: str | Path | None, max_length: int = 40) -> ViltTokenizer:
    """Load the BERT tokenizer of a ViLT directory (``vocab.txt`` or ``tokenizer.json`` + config).

    Raises:
        ValueError: no path.
        FileNotFoundError: ``path`` is not a directory.
    """
    if path is None:
        raise ValueError(
            "ViLT needs its BERT tokenizer: set the encoder's `tokenizer` argument (config key "
            "`tokenizer`) to a ViLT directory, e.g. a saved dandelin/vilt-b32-mlm"
        )
    if not Path(path).is_dir():
        raise FileNotFoundError(f"ViLT tokenizer directory not found: {path}")
    from transformers import BertTokenizer  # deferred: importing transformers takes seconds

    return ViltTokenizer(BertTokenizer.from_pretrained(str(path)), max_length)


def transformers_vilt_format(fusion: Fusion) -> CheckpointFormat:
    """A transformers ViLT state dict -> `ViltEncoder` built with ``fusion``.

    Keys of ``ViltModel`` come bare (``embeddings.*``), those of ``ViltFor*`` models under ``vilt.``;
    both land under ``vilt.`` here. Heads on top of ``ViltModel`` are dropped on purpose.
    """
    vilt = r"(?:vilt\.)?"
    rules = [
        Rule(
            r"mlm_score\..+",
            None,
            "masked-language-modelling head of ViltForMaskedLM (pretraining; its "
            "decoder weight is a copy of the word embeddings); EVF predicts no tokens",
        ),
        Rule(
            r"(classifier|rank_output)\..+",
            None,
            "task head of a fine-tuned ViltFor* model (VQA / NLVR2 "
            "classifier, retrieval score); EVF reads the pooled feature instead",
        ),
        Rule(
            rf"{vilt}embeddings\.text_embeddings\.position_ids",
            None,
            "index buffer 0..39 that transformers < 4.31 saved (dandelin's 2021 files); rebuilt at init",
        ),
    ]
    if fusion == "text":
        image = r"embeddings\.(cls_token|position_embeddings|patch_embeddings\..+)"
        rules.append(
            Rule(
                rf"{vilt}{image}",
                None,
                "image embeddings: fusion='text' reads no image and does not build them",
            )
        )
    rules.append(Rule(rf"{vilt}((embeddings|encoder|layernorm|pooler)\..+)", r"vilt.\1"))
    return CheckpointFormat(name="transformers_vilt", rules=tuple(rules), containers=())


ARCHITECTURE_FIELDS = (
    "vocab_size", "type_vocab_size", "modality_type_vocab_size", "max_position_embeddings", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps",
    "image_size", "patch_size", "num_channels", "qkv_bias", "max_image_length",
)  # fmt: skip
"""``ViltConfig`` fields that must agree between a checkpoint directory and the variant."""


def load_vilt_directory(encoder: ViltEncoder, directory: str | Path) -> None:
    """Check ``directory/config.json`` against the encoder's architecture, then load its weights strictly.

    Raises:
        FileNotFoundError: not a directory, or no ``config.json``.
        CheckpointError: an architecture field differs, no weight file, or the keys do not fit.
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"ViLT checkpoint must be a transformers directory with config.json: {directory}"
        )
    saved = json.loads((directory / "config.json").read_text())
    ours = encoder.vilt.config.to_dict()
    differ = [
        f"{k}={saved[k]!r} (variant: {ours[k]!r})"
        for k in ARCHITECTURE_FIELDS
        if k in saved and saved[k] != ours[k]
    ]
    if differ:
        raise CheckpointError(f"{directory}: config.json does not match the variant: {', '.join(differ)}")
    weights = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not weights:
        raise CheckpointError(f"{directory}: no weight file ({' or '.join(WEIGHT_FILES)})")
    load_checkpoint(encoder, weights[0], transformers_vilt_format(encoder.fusion))


VARIANTS: dict[str, dict[str, Any]] = {
    "vilt_b32": dict(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=384,
        patch_size=32,
        max_position_embeddings=40,
    ),
    "vilt_tiny": dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        max_position_embeddings=40,
    ),
}
"""``ViltConfig`` fields of each variant (the rest keep ``ViltConfig``'s defaults, which are
dandelin/vilt-b32-mlm's); any field can be overridden at creation."""


def _info(variant: str) -> EncoderInfo:
    config = VARIANTS[variant]
    image = ImageSpec(
        config["image_size"], HALF_MEAN, HALF_STD, resize="square", interpolation="bicubic", resampler="torch"
    )
    tokenizer = partial(build_vilt_tokenizer, max_length=config["max_position_embeddings"])
    return EncoderInfo(family="vilt", image=image, build_tokenizer=tokenizer)


def _create_vilt(
    variant: str,
    *,
    tokenizer: str | Path | None = None,
    checkpoint: str | Path | None = None,
    fusion: Fusion = "early",
    **overrides: Any,
) -> ViltEncoder:
    """Build a variant, optionally loading a transformers ViLT directory.

    Args:
        variant: a key of `VARIANTS`.
        tokenizer: directory with the BERT tokenizer files; built lazily on first use.
        checkpoint: transformers ViLT directory; None keeps the random init.
        fusion: ``early``, ``text`` or ``late``.
        **overrides: ``ViltConfig`` fields replacing the variant's.
    """
    from transformers import ViltConfig

    unknown = sorted(set(overrides) - set(ViltConfig().to_dict()))
    if unknown:
        raise TypeError(
            f"{variant}: unknown argument(s) {', '.join(unknown)}; overridable: ViltConfig's fields"
        )
    config = ViltConfig(**{**VARIANTS[variant], **overrides})
    encoder = ViltEncoder(config, EncoderPreprocessor(ENCODERS.info(variant), tokenizer), fusion=fusion)
    if checkpoint is not None:
        load_vilt_directory(encoder, checkpoint)
    return encoder


@ENCODERS.register("vilt_b32", info=_info("vilt_b32"))
def vilt_b32(**kwargs: Any) -> ViltEncoder:
    """ViLT-B/32 (dandelin/vilt-b32-mlm's architecture): 768 wide, 12 layers, 384 px, patch 32."""
    return _create_vilt("vilt_b32", **kwargs)


@ENCODERS.register("vilt_tiny", info=_info("vilt_tiny"))
def vilt_tiny(**kwargs: Any) -> ViltEncoder:
    """Tiny random-init ViLT for tests: 32 wide, 2 layers, 32 px, patch 8, 128-token vocabulary."""
    return _create_vilt("vilt_tiny", **kwargs)


__all__ = [
    "VARIANTS",
    "ViltEncoder",
    "ViltTokenizer",
    "build_vilt_tokenizer",
    "load_vilt_directory",
    "transformers_vilt_format",
]
