"""Referring-segmentation metrics: cIoU (the paper's main number) and gIoU, and for generalized
referring expressions (no target, several targets) the rest of ReLA's gRefCOCO evaluation: N-acc,
T-acc and Pr@0.7/0.8/0.9."""

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


PRECISION_THRESHOLDS = (0.7, 0.8, 0.9)


class ReferringIoU(Metric):
    """cIoU = total intersection / total union over all expressions; gIoU = mean per-expression IoU,
    where an empty target predicted empty counts 1.0 (as the official evaluation does).

    Generalized referring (ReLA's ``refer_evaluation.py``, with "predicted no-target" read as "the
    predicted mask is empty": a presence head that says absent empties the mask): an expression is
    no-target when its ground-truth mask is empty.

    * N-acc = no-target expressions predicted empty / no-target expressions (reported when there
      are some); T-acc = target expressions predicted non-empty / target expressions (reported when
      there are some: ReLA reports both only beside no-target expressions, but T-acc per kind shows
      whether "absent" answers hurt the expressions whose target is there).
    * A no-target expression predicted empty adds IoU 1 to gIoU and nothing to cIoU; predicted
      non-empty it adds IoU 0 and its predicted area to cIoU's union. A target expression predicted
      empty adds IoU 0 and its target area to the union. (These follow from the IoU of the masks.)
    * ``pr@t``: the fraction of target expressions with IoU >= t (ReLA's Pr@t, over targets only).

    States are sums with ``dist_reduce_fx="sum"``, so DDP sync is exact given each expression is
    seen by exactly one process.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    STATES = ("intersection", "union", "iou_sum", "count", "no_target", "no_target_empty", "target",
              "target_found", *(f"pr_{t}" for t in PRECISION_THRESHOLDS))  # fmt: skip

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self.STATES:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``, ``target``: bool ``[n,H,W]`` masks of one image."""
        inter, union, iou = mask_iou_stats(pred, target)
        self.intersection += inter.sum()
        self.union += union.sum()
        self.iou_sum += iou.sum()
        self.count += iou.numel()
        has_target = target.flatten(1).any(1)
        predicted = pred.flatten(1).any(1)
        self.no_target += (~has_target).sum()
        self.no_target_empty += (~has_target & ~predicted).sum()
        self.target += has_target.sum()
        self.target_found += (has_target & predicted).sum()
        for t in PRECISION_THRESHOLDS:
            state = getattr(self, f"pr_{t}")
            state += (has_target & (iou >= t)).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """``ciou``, ``giou``, and over target expressions ``pr@0.7`` ... and ``t_acc``; ``n_acc`` when
        some expressions had no target."""
        ciou = self.intersection / self.union if self.union > 0 else torch.tensor(1.0, dtype=torch.float64)
        out = {"ciou": ciou, "giou": _ratio(self.iou_sum, self.count)}
        out.update({f"pr@{t}": _ratio(getattr(self, f"pr_{t}"), self.target) for t in PRECISION_THRESHOLDS})
        if self.target > 0:
            out["t_acc"] = _ratio(self.target_found, self.target)
        if self.no_target > 0:
            out["n_acc"] = _ratio(self.no_target_empty, self.no_target)
        return {key: value.float() for key, value in out.items()}


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return numerator / denominator if denominator > 0 else torch.tensor(float("nan"), dtype=torch.float64)


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
