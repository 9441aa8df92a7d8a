"""Referring-segmentation metrics: cIoU (the paper's main number) and gIoU."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def mask_iou_stats(
    pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[n,H,W]`` bool masks -> per-mask intersection, union and IoU (empty vs empty = 1.0)."""
    pred, target = pred.flatten(1).bool(), target.flatten(1).bool()
    inter = (pred & target).sum(1).double()
    union = (pred | target).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return inter, union, iou


class ReferringIoU(Metric):
    """cIoU = total intersection / total union over all expressions; gIoU = mean per-expression IoU,
    where an empty target predicted empty counts 1.0 (as the official evaluation does).

    States are sums with ``dist_reduce_fx="sum"``, so DDP sync is exact given each expression is
    seen by exactly one process.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("intersection", "union", "iou_sum", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: bool ``[n,H,W]`` masks of one image."""
        inter, union, iou = mask_iou_stats(pred, target)
        self.intersection += inter.sum()
        self.union += union.sum()
        self.iou_sum += iou.sum()
        self.count += iou.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        ciou = self.intersection / self.union if self.union > 0 else torch.tensor(1.0, dtype=torch.float64)
        giou = (
            self.iou_sum / self.count if self.count > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        )
        return {"ciou": ciou.float(), "giou": giou.float()}


def pooled(metrics: list[ReferringIoU]) -> ReferringIoU:
    """One `ReferringIoU` over the expressions of several (e.g. every validation split): cIoU pools
    all intersections and unions, gIoU averages over every expression. Its ``compute`` syncs across
    processes like any of them."""
    device = metrics[0].intersection.device if metrics else torch.device("cpu")
    total = ReferringIoU().to(device)
    empty = torch.zeros(0, 1, 1, dtype=torch.bool, device=device)
    total.update(empty, empty)  # adds nothing; marks the metric updated, so compute() does not warn
    for metric in metrics:
        total.merge_state(metric)
    return total
