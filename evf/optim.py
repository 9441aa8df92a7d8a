"""The optimiser of `EVFSAMModule`: AdamW over the trainable tensors in parameter groups by part, and
the paper's linear schedule (warmup, linear decay, SAM's decoder held for its first steps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from evf.model import EVFSAM


@dataclass
class OptimConfig:
    """AdamW with linear decay (the paper's schedule) and optional linear warmup.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW weight decay, applied to weight matrices only (not to norms, biases,
            embeddings-as-tokens).
        betas: AdamW betas.
        warmup_steps: linear warmup from 0 to ``lr``.
        schedule: ``linear`` decays to 0 at the last step; ``constant`` keeps ``lr``.
        image_encoder_lr_scale: lr multiplier for the SAM image encoder when it trains.
        decoder_lr_scale: lr multiplier for SAM's prompt encoder and mask decoder, which arrive
            pretrained while the multimodal encoder and the projector may start from scratch.
        decoder_start_step: SAM's prompt encoder and mask decoder keep their weights (lr 0) for this
            many steps, then follow the schedule: the text side first learns to prompt the
            pretrained decoder, before the decoder adapts to it.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: Literal["linear", "constant"] = "linear"
    image_encoder_lr_scale: float = 1.0
    decoder_lr_scale: float = 1.0
    decoder_start_step: int = 0


_PART_KINDS = {"image_encoder": "image_encoder", "prompt_encoder": "decoder", "mask_decoder": "decoder"}


def param_groups(model: EVFSAM, optim: OptimConfig) -> list[dict]:
    """Only trainable tensors (LoRA adapters included: they lie inside their parts); weight decay on
    matrices only; SAM's parts at their own lr scales. Each group names its part kind
    (``image_encoder``, ``decoder``: SAM's prompt encoder and mask decoder, ``text``: the
    multimodal encoder, the projector and the presence head) for the schedule."""
    scales = {"image_encoder": optim.image_encoder_lr_scale, "decoder": optim.decoder_lr_scale}
    groups: dict[tuple[bool, str], list[nn.Parameter]] = {}
    for part, module in model.parts().items():
        kind = _PART_KINDS.get(part, "text")
        for p in module.parameters():
            if p.requires_grad:
                groups.setdefault((p.ndim >= 2, kind), []).append(p)
    if not groups:
        raise ValueError("nothing to train: every part is frozen (see `trainable`)")
    return [
        {
            "params": ps,
            "weight_decay": optim.weight_decay if decay else 0.0,
            "lr": optim.lr * scales.get(kind, 1.0),
            "part": kind,
        }
        for (decay, kind), ps in groups.items()
    ]


def lr_schedule(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per group of `param_groups`: linear warmup, then linear decay to 0 at ``total_steps`` (or
    constant); SAM's decoder groups at 0 until ``decoder_start_step`` (AdamW then leaves them alone)."""
    warmup, schedule, hold = optim.warmup_steps, optim.schedule, optim.decoder_start_step
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(total - warmup, 1))

    def decoder_factor(step: int) -> float:
        return 0.0 if step < hold else factor(step)

    factors = [decoder_factor if g.get("part") == "decoder" else factor for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


__all__ = ["OptimConfig", "lr_schedule", "param_groups"]
