"""Mask losses of EVF-SAM: per-expression sigmoid BCE and Dice, averaged over expressions; and the
presence head's BCE (generalized referring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_bce(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean per-pixel BCE of each mask: ``[n,H,W]`` logits and {0,1} targets -> ``[n]``; with
    ``valid`` (bool ``[H,W]``), the mean over the valid pixels only."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if valid is None:
        return per_pixel.flatten(1).mean(1)
    weight = valid.to(per_pixel.dtype)
    return (per_pixel * weight).flatten(1).sum(1) / weight.sum().clamp(min=1)


def dice(
    logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice loss of each mask -> ``[n]``, over the ``valid`` pixels (bool ``[H,W]``) if given.

    ``eps`` smooths both numerator and denominator, so an empty target predicted empty costs ~0.
    (EVF-SAM/LISA use the same form with pixel sums scaled by 1/1000 and eps 1e-6; we keep sums
    unscaled and a pixel-sized eps, which is resolution independent in the same way.)
    """
    probs = logits.sigmoid()
    if valid is not None:
        probs, targets = probs * valid, targets * valid
    probs, targets = probs.flatten(1), targets.flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def mask_losses(
    logits: list[torch.Tensor],
    targets: list[torch.Tensor],
    void: list[torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image lists of ``[n_i,H_i,W_i]`` logits and masks -> mean BCE and Dice over all expressions
    (zero, still attached to the graph, when there is none: every process's backward then reaches
    the same parameters). ``void``: per image, None or bool ``[H_i,W_i]`` pixels left out of both."""
    valid = [None if v is None else ~v for v in (void or [None] * len(logits))]
    pairs = list(zip(logits, targets, valid, strict=True))
    bce = torch.cat([sigmoid_bce(p.float(), t.float(), ok) for p, t, ok in pairs])
    dsc = torch.cat([dice(p.float(), t.float(), valid=ok) for p, t, ok in pairs])
    if bce.numel() == 0:
        zero = sum(p.sum() for p in logits) * 0.0
        return {"bce": zero, "dice": zero}
    return {"bce": bce.mean(), "dice": dsc.mean()}


def presence_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean BCE of presence logits ``[N]`` against ``present`` (bool ``[N]``: the target is in the
    image), over the prompts with text (finite logits; a points/box-only prompt has ``+inf``)."""
    rows = logits.isfinite()
    return F.binary_cross_entropy_with_logits(logits[rows].float(), present[rows].float())
