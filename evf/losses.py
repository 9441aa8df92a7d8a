"""Mask losses of EVF-SAM: per-expression sigmoid BCE and Dice, averaged over expressions; and the
presence head's BCE (generalized referring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel BCE of each mask: ``[n,H,W]`` logits and {0,1} targets -> ``[n]``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)


def dice(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of each mask -> ``[n]``.

    ``eps`` smooths both numerator and denominator, so an empty target predicted empty costs ~0.
    (EVF-SAM/LISA use the same form with pixel sums scaled by 1/1000 and eps 1e-6; we keep sums
    unscaled and a pixel-sized eps, which is resolution independent in the same way.)
    """
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def mask_losses(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-image lists of ``[n_i,H_i,W_i]`` logits and masks -> mean BCE and Dice over all expressions
    (zero, still attached to the graph, when there is none: every process's backward then reaches
    the same parameters)."""
    bce = torch.cat([sigmoid_bce(p.float(), t.float()) for p, t in zip(logits, targets, strict=True)])
    dsc = torch.cat([dice(p.float(), t.float()) for p, t in zip(logits, targets, strict=True)])
    if bce.numel() == 0:
        zero = sum(p.sum() for p in logits) * 0.0
        return {"bce": zero, "dice": zero}
    return {"bce": bce.mean(), "dice": dsc.mean()}


def presence_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean BCE of presence logits ``[N]`` against ``present`` (bool ``[N]``: the target is in the
    image), over the prompts with text (finite logits; a points/box-only prompt has ``+inf``)."""
    rows = logits.isfinite()
    return F.binary_cross_entropy_with_logits(logits[rows].float(), present[rows].float())
