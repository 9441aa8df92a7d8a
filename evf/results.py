"""Results tables of ``evf validate`` / ``evf test`` (and every validation of a fit).

When all eight RefCOCO-family splits of the paper's Table 2 ran (the names of
``configs/recipes/refcoco.yaml``: ``refcoco/val``, ``refcoco/testA``, ..., ``refcocog/test``), the
table has Table 2's columns: RefCOCO val/testA/testB, RefCOCO+ val/testA/testB, RefCOCOg val/test,
and AVG (their mean), once for cIoU (the paper's number) and once for gIoU; any further splits get a
generic table below. Other split sets get one generic table of whatever ran, AVG over all of them.
When some split had no-target expressions (gRefCOCO, generalized shapes), a table lists ReLA's
gRefCOCO columns per split: cIoU, gIoU, N-acc, T-acc, Pr@0.7/0.8/0.9. Then every split's metrics
per expression kind (when its data declares kinds), the items skipped as unreadable per split, and
every split pooled. Values are percentages with one decimal, as in the paper, "–" where undefined
(a kind without targets has no Pr@0.7); the JSON keeps the raw fractions (every metric of a split
under ``metrics``, per kind under ``per_kind``, ``skipped``, ``pooled``), ``null`` where undefined:
neither file ever holds NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TABLE2_SPLITS = (
    "refcoco/val", "refcoco/testA", "refcoco/testB",
    "refcoco+/val", "refcoco+/testA", "refcoco+/testB",
    "refcocog/val", "refcocog/test",
)  # fmt: skip
DATASET_TITLES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
METRICS = {"ciou": "cIoU", "giou": "gIoU"}
GENERALIZED = {**METRICS, "n_acc": "N-acc", "t_acc": "T-acc", "pr@0.7": "Pr@0.7", "pr@0.8": "Pr@0.8",
               "pr@0.9": "Pr@0.9"}  # fmt: skip

Results = Mapping[str, Mapping[str, float]]
"""split name -> metric (``ciou``, ``giou``, optionally ``n_acc``, ``t_acc``, ``pr@0.7`` ...) -> value
in [0, 1]."""


@dataclass
class StageResults:
    """One evaluation's values: per split, per split and expression kind, items skipped per split
    (only splits that skipped some), and every split pooled."""

    per_split: dict[str, dict[str, float]] = field(default_factory=dict)
    per_kind: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)


def _stage(results: Results | StageResults) -> StageResults:
    if isinstance(results, StageResults):
        return results
    return StageResults(per_split={s: dict(v) for s, v in results.items()})


def _defined(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {k: _defined(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def layout(results: Results) -> tuple[str, list[str], list[str]]:
    """``("table2" | "generic", columns of the main table, splits of the extra table)``."""
    if all(split in results for split in TABLE2_SPLITS):
        return "table2", list(TABLE2_SPLITS), [s for s in results if s not in TABLE2_SPLITS]
    return "generic", list(results), []


def results_record(results: Results | StageResults, stage: str, model: str) -> dict[str, Any]:
    """The JSON record: layout, columns, every split's metrics and the AVG of the main columns, the
    metrics per kind, the skipped counts and the pooled metrics; undefined values are None."""
    values = _stage(results)
    results = values.per_split
    kind, columns, extra = layout(results)
    return _defined({
        "stage": stage,
        "model": model,
        "layout": kind,
        "columns": columns,
        "extra_columns": extra,
        **{m: {s: float(results[s][m]) for s in results} for m in METRICS},
        "avg": {m: _mean(results[s][m] for s in columns) for m in METRICS},
        "metrics": {s: {m: float(v) for m, v in results[s].items()} for s in results},
        "per_kind": values.per_kind,
        "skipped": values.skipped,
        "pooled": values.pooled,
    })  # fmt: skip


def results_markdown(results: Results | StageResults, stage: str, model: str) -> str:
    """One table per metric in the `layout`, a generic table of the extra splits, then the
    generalized metrics, the metrics per kind, skipped items and the pooled metrics."""
    values = _stage(results)
    results = values.per_split
    kind, columns, extra = layout(results)
    title = "Table 2 layout (paper)" if kind == "table2" else "splits that ran"
    lines = [f"# Results: {stage} ({title})", ""]
    for metric, name in METRICS.items():
        lines += [f"## {name}", "", *_table(results, columns, metric, model, with_avg=True), ""]
        if extra:
            lines += [
                f"### {name}, other splits",
                "",
                *_table(results, extra, metric, model, with_avg=False),
                "",
            ]
    generalized = [s for s in results if "n_acc" in results[s]]
    if generalized:
        header = ["Split", *GENERALIZED.values()]
        lines += ["## Generalized referring (ReLA's gRefCOCO metrics)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
        for split in generalized:
            cells = [_percent(results[split].get(m, float("nan"))) for m in GENERALIZED]
            lines.append("| " + " | ".join([_title(split), *cells]) + " |")
        lines.append("")
    return "\n".join(lines + _details(values))


def _details(values: StageResults) -> list[str]:
    """Markdown of the metrics per kind, the skipped items and the pooled metrics."""
    lines: list[str] = []
    metrics = [m for m in GENERALIZED if any(m in v for k in values.per_kind.values() for v in k.values())]
    if values.per_kind:
        header = ["Split", "Kind", *(GENERALIZED[m] for m in metrics)]
        lines += ["## Per expression kind", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for split, kinds in values.per_kind.items():
            for kind, numbers in sorted(kinds.items()):
                cells = [_percent(numbers.get(m, float("nan"))) for m in metrics]
                lines.append("| " + " | ".join([_title(split), kind, *cells]) + " |")
        lines.append("")
    if values.skipped:
        lines += ["## Skipped (unreadable, not evaluated)", "", "| Split | Items |", "|---|---|"]
        lines += [f"| {_title(split)} | {count} |" for split, count in values.skipped.items()]
        lines.append("")
    if values.pooled:
        names = [m for m in GENERALIZED if m in values.pooled]
        header = "| " + " | ".join(GENERALIZED[m] for m in names) + " |"
        row = "| " + " | ".join(_percent(values.pooled[m]) for m in names) + " |"
        lines += ["## Every split pooled", "", header, "|" + "---|" * len(names), row, ""]
    return lines


def write_results(
    results: Results | StageResults, stage: str, directory: str | Path, model: str
) -> tuple[Path, Path]:
    """Write ``<directory>/results_<stage>.md`` and ``.json``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / f"results_{stage}.md", directory / f"results_{stage}.json"
    md.write_text(results_markdown(results, stage, model))
    js.write_text(json.dumps(results_record(results, stage, model), indent=2, allow_nan=False) + "\n")
    return md, js


def _table(results: Results, splits: Sequence[str], metric: str, model: str, with_avg: bool) -> list[str]:
    header = ["Model", *map(_title, splits)] + (["AVG"] if with_avg else [])
    row = [model, *(_percent(results[s][metric]) for s in splits)]
    if with_avg:
        row.append(_percent(_mean(results[s][metric] for s in splits)))
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"]


def _title(split: str) -> str:
    """``refcoco+/testA`` -> ``RefCOCO+ testA``; other names stay as they are."""
    dataset, _, part = split.partition("/")
    return f"{DATASET_TITLES[dataset]} {part}" if dataset in DATASET_TITLES and part else split


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


__all__ = ["TABLE2_SPLITS", "StageResults", "layout", "results_markdown", "results_record", "write_results"]
