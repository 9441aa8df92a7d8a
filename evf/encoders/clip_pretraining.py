"""CLIP's contrastive pretraining (Radford et al., 2021) on image-caption pairs, at tiny scale.

Both towers embed their input; after L2 normalisation, the image-caption similarities of a batch,
times a learnt temperature ``exp(logit_scale)`` (initialised to 1/0.07 and capped at 100, as
CLIP), are the logits of two cross-entropies: each image picks its caption among the batch's
captions and each caption its image (open_clip's ``ClipLoss`` on one device).

The encoder is written as an open_clip ``CLIP`` state dict (text tower at the top level,
``visual.*``, ``logit_scale``), which `create_encoder(..., checkpoint=)` loads strictly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import CheckpointFormat, Rule, load_checkpoint, read_state_dict
from evf.encoders import create_encoder
from evf.encoders.clip import CLIPEncoder, open_clip_format
from evf.encoders.pretraining import CaptionBatch, PretrainObjective

MAX_LOGIT_SCALE = math.log(100.0)
TO_OPEN_CLIP = CheckpointFormat(
    "open_clip (export)", (Rule(r"text\.(.+)", r"\1"), Rule(r"visual\.(.+)", r"visual.\1")), containers=()
)
"""`CLIPEncoder` keys -> open_clip ``CLIP`` keys (the inverse of `evf.encoders.clip.open_clip_format`)."""


class CLIPContrastive(PretrainObjective):
    """A CLIP with both towers (``late`` fusion) and a learnt temperature."""

    def __init__(self, encoder: CLIPEncoder) -> None:
        super().__init__()
        if encoder.visual is None:
            raise ValueError("contrastive pretraining needs both towers: build the CLIP with fusion='late'")
        self.encoder = encoder
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def similarities(self, batch: CaptionBatch) -> torch.Tensor:
        """``[B,B]`` scaled cosine similarities, row = image, column = caption."""
        images = F.normalize(self.encoder.visual(batch.pixels), dim=-1)
        texts = F.normalize(self.encoder.encode_text(batch.input_ids), dim=-1)
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * images @ texts.T

    def description(self) -> str:
        return "CLIP symmetric image-text contrastive loss (InfoNCE both ways, learnt temperature)"

    def forward(self, batch: CaptionBatch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        logits = self.similarities(batch)
        target = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        accuracy = (logits.argmax(1) == target).float().mean()
        return {"loss": loss, "contrastive": loss.detach(), "in_batch_accuracy": accuracy}

    @torch.no_grad()
    def retrieval_scores(self, batch: CaptionBatch) -> torch.Tensor:
        return self.similarities(batch)

    def save(self, path: Path) -> Path:
        state = TO_OPEN_CLIP.remap(self.encoder.state_dict(), "pretrained CLIP")
        state["logit_scale"] = self.logit_scale.detach().clone()  # open_clip's own key: the only head
        torch.save({k: v.detach().clone() for k, v in state.items()}, path)
        return path

    def load(self, path: Path) -> None:
        load_checkpoint(self.encoder, path, open_clip_format("late"))
        self.load_head_state({"logit_scale": read_state_dict(path)["logit_scale"]})


def build_objective(
    encoder: str,
    tokenizer: str | Path | None = None,
    objective_kwargs: dict[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> CLIPContrastive:
    """Contrastive pretraining around a random-init ``encoder`` (a registered CLIP name)."""
    return CLIPContrastive(
        create_encoder(encoder, tokenizer=tokenizer, fusion="late", **encoder_kwargs),
        **(objective_kwargs or {}),
    )


__all__ = ["CLIPContrastive", "TO_OPEN_CLIP", "build_objective"]
