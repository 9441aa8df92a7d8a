"""Multimodal encoders: read the expression (and, by fusion mode, the image) -> one vector each.

Families register factories in `ENCODERS` under short names (``beit3_large``, ``clip_vit_l14_openai``,
``vilt_b32``, ``beit3_tiny``, ...): BEIT-3 (`beit3`), CLIP via open_clip (`clip`), ViLT via
transformers (`vilt`); see docs/encoders.md.
Third-party encoders register through the ``evf.encoders`` entry-point group.
"""

from pathlib import Path

from evf.encoders import (
    beit3,  # noqa: F401  (registers the BEIT-3 family)
    clip,  # noqa: F401  (registers the CLIP family)
    vilt,  # noqa: F401  (registers the ViLT family)
)
from evf.encoders.base import (
    ENCODERS,
    EncoderInfo,
    EncoderPreprocessor,
    EncoderRelease,
    MultimodalEncoder,
    Tokenizer,
)


def create_encoder(name: str, **kwargs) -> MultimodalEncoder:
    """Build a registered encoder, e.g. ``create_encoder("beit3_large", tokenizer="beit3.spm")``."""
    return ENCODERS.create(name, **kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching an fnmatch pattern."""
    return ENCODERS.names(pattern)


def build_preprocessor(name: str, tokenizer: str | Path | None = None) -> EncoderPreprocessor:
    """The tokenizer and image transform of encoder ``name``, without building its weights."""
    return EncoderPreprocessor(ENCODERS.info(name), tokenizer)


__all__ = [
    "ENCODERS",
    "EncoderInfo",
    "EncoderPreprocessor",
    "EncoderRelease",
    "MultimodalEncoder",
    "Tokenizer",
    "build_preprocessor",
    "create_encoder",
    "list_encoders",
]
