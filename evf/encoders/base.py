"""The interface every multimodal encoder implements, and the metadata it registers with.

A family that EVF-SAM released checkpoints of (BEIT-3) declares how they hold it (`EncoderRelease`,
in its `EncoderInfo`); `evf.pretrained` and ``evf export`` reach it through the encoder's
``release_*`` methods without knowing the family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from evf.checkpoint import CheckpointError, Rule, StateDict
from evf.preprocessing import ImageSpec
from evf.registry import Registry


class Tokenizer(Protocol):
    """Turns expressions into padded ids. ``max_length`` counts special tokens."""

    max_length: int

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Returns ``input_ids`` and ``attention_mask``, both ``[N,L]`` long tensors (1 = real token)."""
        ...

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Ids per expression before truncation, special tokens included (above ``max_length``: truncated)."""
        ...


@dataclass(frozen=True, eq=False)
class EncoderRelease:
    """How an encoder family is stored as the multimodal extractor of EVF-SAM's released checkpoints.
    One object per family, compared by identity (so that `EncoderInfo` stays hashable). Each callable
    takes the built encoder first.

    Attributes:
        scales: config.json's ``mm_extractor_scale`` -> registered encoder name.
        rules: ``(encoder, prefix) -> rules`` from the released keys under ``prefix`` to the
            encoder's keys (dropping on purpose what the encoder does not build).
        export: ``(encoder, prefix) -> (tensors, placeholders)``: the encoder's tensors under their
            released names, with zeros for the released tensors it does not build, and the names of
            those; raises `CheckpointError` when the released layout cannot describe the encoder.
        write_tokenizer: ``(encoder, directory)``: writes the tokenizer files a release holds.
    """

    scales: dict[str, str]
    rules: Callable[[Any, str], tuple[Rule, ...]]
    export: Callable[[Any, str], tuple[StateDict, list[str]]]
    write_tokenizer: Callable[[Any, Path], None]


@dataclass(frozen=True)
class EncoderInfo:
    """What the data side needs to know about an encoder without building its weights.

    Attributes:
        family: module family (``beit3``, ``clip``, ``vilt``), for docs and error messages.
        image: the encoder's image preprocessing.
        build_tokenizer: ``tokenizer path or None -> Tokenizer``; a family without a built-in
            vocabulary raises a clear error when the path is missing.
        release: the family's form in released EVF-SAM checkpoints; None: it has none.
    """

    family: str
    image: ImageSpec
    build_tokenizer: Callable[[str | Path | None], Tokenizer]
    release: EncoderRelease | None = None


class EncoderPreprocessor:
    """Tokenizer plus image transform of one encoder: everything a batch needs on the encoder side.

    The tokenizer is built on first use, so a model can be built (e.g. on the ``meta`` device to
    count parameters) without its tokenizer files.
    """

    def __init__(self, info: EncoderInfo, tokenizer_path: str | Path | None = None) -> None:
        self.info = info
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

    def checkpoint_architecture(self) -> dict[str, Any]:
        """Factory arguments that the weights file decided rather than the caller (BEIT-3's
        ``sub_ln``): a run keeps them in its ``encoder_kwargs`` so that it rebuilds without the file.
        Empty by default."""
        return {}

    def release_rules(self, prefix: str) -> tuple[Rule, ...]:
        """Rules from a released EVF-SAM checkpoint's extractor keys under ``prefix`` to this encoder's."""
        return self._release().rules(self, prefix)

    def release_state(self, prefix: str) -> tuple[StateDict, list[str]]:
        """This encoder's tensors as a release names them under ``prefix``, with zero placeholders for
        the released tensors it does not build; and the placeholders' names."""
        return self._release().export(self, prefix)

    def write_release_tokenizer(self, directory: Path) -> None:
        """Write the tokenizer files of a release into ``directory``."""
        self._release().write_tokenizer(self, directory)

    def _release(self) -> EncoderRelease:
        release = self.preprocessor.info.release
        if release is None:
            raise CheckpointError(
                f"released EVF-SAM checkpoints hold BEIT-3; this model has {type(self).__name__}"
            )
        return release


ENCODERS: Registry[MultimodalEncoder, EncoderInfo] = Registry("encoder", "evf.encoders")
