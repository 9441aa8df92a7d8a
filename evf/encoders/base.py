"""The interface every multimodal encoder implements, and the metadata it registers with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from evf.preprocessing import ImageSpec
from evf.registry import Registry


class Tokenizer(Protocol):
    """Turns expressions into padded ids. ``max_length`` counts special tokens."""

    max_length: int

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Returns ``input_ids`` and ``attention_mask``, both ``[N,L]`` long tensors (1 = real token)."""
        ...


@dataclass(frozen=True)
class EncoderInfo:
    """What the data side needs to know about an encoder without building its weights.

    Attributes:
        family: module family (``beit3``, ``clip``, ``vilt``), for docs and error messages.
        image: the encoder's image preprocessing.
        build_tokenizer: ``tokenizer path or None -> Tokenizer``; a family without a built-in
            vocabulary raises a clear error when the path is missing.
    """

    family: str
    image: ImageSpec
    build_tokenizer: Callable[[str | Path | None], Tokenizer]


class EncoderPreprocessor:
    """Tokenizer plus image transform of one encoder: everything a batch needs on the encoder side.

    The tokenizer is built on first use, so a model can be built (e.g. on the ``meta`` device to
    count parameters) without its tokenizer files.
    """

    def __init__(self, info: EncoderInfo, tokenizer_path: str | Path | None = None) -> None:
        self.image = info.image
        self._build_tokenizer = info.build_tokenizer
        self._tokenizer_path = tokenizer_path
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer(self._tokenizer_path)
        return self._tokenizer

    def transform_image(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H,W,3]`` -> ``[3,E,E]``."""
        return self.image(image)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)


class MultimodalEncoder(nn.Module, ABC):
    """Reads expressions and (depending on its fusion mode) their images; returns one vector each.

    Subclasses set ``feature_dim`` (the projector's input width) and ``preprocessor``.
    """

    feature_dim: int
    preprocessor: EncoderPreprocessor

    @abstractmethod
    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """Encode expressions.

        Args:
            pixels: ``[B,3,E,E]`` encoder-normalised images.
            input_ids: ``[N,L]`` token ids, right-padded.
            attention_mask: ``[N,L]``, 1 for real tokens, 0 for padding.
            image_index: ``[N]``, which image each expression belongs to.

        Returns:
            ``[N, feature_dim]`` features.
        """


ENCODERS: Registry[MultimodalEncoder, EncoderInfo] = Registry("encoder", "evf.encoders")
