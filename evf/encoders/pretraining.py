"""Pretraining objectives of the encoder families, for ``evf pretrain-encoder``.

Each family is pretrained on image-caption pairs with its own paper's objective, in a module beside
the family (`evf.encoders.beit3.pretraining`, `clip_pretraining`, `vilt_pretraining`). None of them
sees a mask, a box or a referring target. An objective wraps the encoder built in the mode its
pretraining needs (every part built), adds the pretraining heads, and writes the encoder alone in
the family's checkpoint format, which the encoder factory's ``checkpoint=`` then loads strictly in
any fusion mode.

`OBJECTIVES` maps a family (``EncoderInfo.family``) to its objective's builder.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evf.checkpoint import CheckpointError
from evf.encoders.base import ENCODERS, MultimodalEncoder

IGNORE = -100
"""Label of a position that takes no loss (``F.cross_entropy``'s ``ignore_index``)."""


@dataclass
class CaptionBatch:
    """Images and their captions, one caption per image.

    Attributes:
        pixels: ``[B,3,E,E]`` encoder-normalised images.
        input_ids, attention_mask: ``[B,L]`` tokenised captions (caption ``i`` describes image ``i``).
        texts: the captions.
    """

    pixels: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str]


class PretrainObjective(nn.Module, ABC):
    """An encoder plus its family's pretraining heads and loss.

    Attributes:
        encoder: the encoder being pretrained (every part built).
        probes: names of the numbers `probe` returns.
    """

    encoder: MultimodalEncoder

    @abstractmethod
    def description(self) -> str:
        """What this objective does, with its rates: the card's ``objective``."""

    @abstractmethod
    def forward(self, batch: CaptionBatch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """The loss of one batch (``loss``) and its terms; ``gen`` draws every mask and negative."""

    @abstractmethod
    def save(self, path: Path) -> Path:
        """Write the encoder in the family's checkpoint format, with the pretraining heads where that
        format's loader does not look (so the file still loads strictly as an encoder); returns what to
        pass as the factory's ``checkpoint=`` (a file, or a directory for ViLT)."""

    @abstractmethod
    def load(self, path: Path) -> None:
        """Load what `save` wrote: the encoder through its family's strict loader, then the heads."""

    def head_state(self) -> dict[str, torch.Tensor]:
        """The pretraining heads' tensors (everything but the encoder)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        """Strict: exactly the tensors `head_state` returns."""
        ours = self.head_state()
        if set(state) != set(ours):
            missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
            raise CheckpointError(f"pretraining heads: missing {missing}, unexpected {unexpected}")
        self.load_state_dict({**self.state_dict(), **state})

    def masked_word_logits(self, batch: CaptionBatch, masked: torch.Tensor) -> torch.Tensor | None:
        """Logits ``[B,L,V]`` over the vocabulary with the positions of ``masked`` ``[B,L]`` bool replaced
        by the mask token; None for a family without masked language modelling."""
        return None

    @torch.no_grad()
    def retrieval_scores(self, batch: CaptionBatch) -> torch.Tensor | None:
        """Image-text similarity ``[B,B]`` (row: image, column: caption); None where not defined."""
        return None


def word_numbers(input_ids: torch.Tensor, starts: torch.Tensor, specials: torch.Tensor) -> torch.Tensor:
    """Each token's word number within its row, -1 for special and padding tokens.

    Args:
        input_ids: ``[B,L]``.
        starts: ``[V]`` bool, the ids that begin a word (sentencepiece ``▁...``, WordPiece without ``##``).
        specials: ``[V]`` bool, the special ids (``<s>``, padding, ...).
    """
    special = specials[input_ids]
    numbers = torch.cumsum((starts[input_ids] & ~special).long(), dim=1) - 1
    return numbers.masked_fill(special, -1)


def whole_word_mask(word_ids: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Mask ``rate`` of the words of each row, at least one: ``word_ids [B,L]`` from `word_numbers`
    -> ``[B,L]`` bool."""
    masked = torch.zeros_like(word_ids, dtype=torch.bool)
    for row, ids in enumerate(word_ids):
        words = int(ids.max()) + 1
        if words <= 0:
            continue
        chosen = torch.randperm(words, generator=gen)[: max(1, round(rate * words))]
        masked[row] = torch.isin(ids, chosen)
    return masked


OBJECTIVES: dict[str, str] = {
    "beit3": "evf.encoders.beit3.pretraining:build_objective",
    "clip": "evf.encoders.clip_pretraining:build_objective",
    "vilt": "evf.encoders.vilt_pretraining:build_objective",
}
"""Family -> ``module:function(encoder_name, tokenizer, **encoder_kwargs) -> PretrainObjective``."""


def build_objective(
    encoder: str,
    tokenizer: str | Path | None = None,
    pretrained: str | Path | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
    objective_kwargs: dict[str, Any] | None = None,
) -> PretrainObjective:
    """The pretraining objective of a registered encoder's family, around a random-init encoder, or
    with encoder and heads from what `PretrainObjective.save` wrote to ``pretrained``.
    ``encoder_kwargs`` go to the encoder's factory (architecture overrides such as BEIT-3's
    ``sub_ln``); the fine-tuning config must pass the same ones to load the weights.
    ``objective_kwargs`` go to the objective (BEIT-3: ``mask_rate``, ``patch_mask_rate``,
    ``always_masked``; ViLT: ``mask_rate``, ``swap_rate``).

    Raises:
        ValueError: the encoder's family has no pretraining objective.
    """
    family = ENCODERS.info(encoder).family
    if family not in OBJECTIVES:
        raise ValueError(
            f"no pretraining objective for {encoder!r} (family {family!r}); families: {', '.join(OBJECTIVES)}"
        )
    module, function = OBJECTIVES[family].split(":")
    build = getattr(importlib.import_module(module), function)
    objective = build(encoder, tokenizer, objective_kwargs, **(encoder_kwargs or {}))
    if pretrained is not None:
        objective.load(Path(pretrained))
    return objective


__all__ = [
    "IGNORE",
    "OBJECTIVES",
    "CaptionBatch",
    "PretrainObjective",
    "build_objective",
    "whole_word_mask",
    "word_numbers",
]
