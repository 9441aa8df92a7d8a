"""What one evaluation stage (validation or test) of `EVFSAMModule` counts, per named split: a
`ReferringIoU`, one per expression kind the split declares, and the items that could not be read
(skip mode). States are sums, so every number is exact-once under DDP."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.aggregation import SumMetric

from evf.batch import Batch
from evf.decode import Prediction
from evf.metrics import ReferringIoU, pooled
from evf.results import StageResults

log = logging.getLogger(__name__)


class EvaluationMetrics(nn.Module):
    """The metrics of one stage. `reset` at the stage's start (with its splits), `update` per batch,
    `results` at its end."""

    def __init__(self) -> None:
        super().__init__()
        self.splits = nn.ModuleList()
        self.kinds = nn.ModuleList()  # per split: ModuleDict kind -> ReferringIoU
        self.skipped = nn.ModuleList()

    def reset(
        self,
        num_splits: int,
        kinds: Sequence[Sequence[str]],
        device: torch.device,
        index_skipped: Sequence[int] = (),
    ) -> None:
        """Empty every metric for ``num_splits`` splits; ``kinds``: the kinds each split declares
        (the same on every process, so their DDP sync matches); ``index_skipped``: per split, the
        records dropped while its index was built, counted once (pass them on one process only)."""
        while len(self.splits) < num_splits:
            self.splits.append(ReferringIoU().to(device))
            self.skipped.append(SumMetric().to(device))
        for metric in self.splits:
            metric.reset()
        for split, counter in enumerate(self.skipped):
            counter.reset()
            counter.update(0.0)  # marks it updated on every process, so that compute() syncs everywhere
            if split < len(index_skipped) and index_skipped[split]:
                counter.update(float(index_skipped[split]))
        del self.kinds[:]
        for split_kinds in kinds:
            self.kinds.append(nn.ModuleDict({kind: pooled([]) for kind in split_kinds}).to(device))

    def update(self, split: int, batch: Batch, predictions: Sequence[Prediction]) -> None:
        """Count one batch of split ``split``: its unreadable items and every expression."""
        if batch.failures:
            self.skipped[split].update(float(len(batch.failures)))
        metric, by_kind = self.splits[split], self.kinds[split]
        void = batch.void or [None] * len(predictions)
        start = 0
        for prediction, target, void_pixels in zip(predictions, batch.masks, void, strict=True):
            predicted = prediction.masks
            if void_pixels is not None:  # judged by no metric: out of both intersection and union
                predicted, target = predicted & ~void_pixels, target & ~void_pixels
            metric.update(predicted, target)
            kinds = batch.kinds[start : start + len(target)]
            start += len(target)
            for kind in set(kinds) & set(by_kind):
                rows = torch.tensor([k == kind for k in kinds], device=target.device)
                by_kind[kind].update(predicted[rows], target[rows])

    def results(self, names: Sequence[str], prefix: str) -> tuple[dict[str, float], StageResults]:
        """``<prefix>/<split>/<metric>``, ``<prefix>/<split>/<kind>/<metric>`` for the kinds met,
        ``<prefix>/<split>/skipped`` where items were skipped, and ``<prefix>/<metric>`` over every
        split together (what is logged); and the same values by split, kind and metric (for the
        results files). Synced across processes."""
        stage = StageResults()
        for name, metric in zip(names, self.splits, strict=False):
            stage.per_split[name] = {key: float(value) for key, value in metric.compute().items()}
        results = {
            f"{prefix}/{name}/{key}": v for name, vals in stage.per_split.items() for key, v in vals.items()
        }
        for name, by_kind in zip(names, self.kinds, strict=False):
            for kind, metric in by_kind.items():
                values = metric.compute()  # synced: the same on every process, so is the skip below
                if not values["giou"].isnan():  # a declared kind with no expression this time
                    stage.per_kind.setdefault(name, {})[kind] = {key: float(v) for key, v in values.items()}
                    results.update({f"{prefix}/{name}/{kind}/{key}": float(v) for key, v in values.items()})
        for name, counter in zip(names, self.skipped, strict=False):
            count = int(counter.compute())
            if count:
                stage.skipped[name] = count
                results[f"{prefix}/{name}/skipped"] = float(count)
                log.warning("%s/%s: %d unreadable item(s) skipped, not evaluated", prefix, name, count)
        if stage.per_split:
            overall = pooled(list(self.splits)[: len(names)]).compute()
            stage.pooled = {key: float(value) for key, value in overall.items()}
            results.update({f"{prefix}/{key}": v for key, v in stage.pooled.items()})
        return results, stage


__all__ = ["EvaluationMetrics"]
