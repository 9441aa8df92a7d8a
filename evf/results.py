"""Results tables of ``evf validate`` / ``evf test`` (and every validation of a fit).

When all eight RefCOCO-family splits of the paper's Table 2 ran (the names of
``configs/recipes/refcoco.yaml``: ``refcoco/val``, ``refcoco/testA``, ..., ``refcocog/test``), the
table has Table 2's columns: RefCOCO val/testA/testB, RefCOCO+ val/testA/testB, RefCOCOg val/test,
and AVG (their mean), once for cIoU (the paper's number) and once for gIoU; any further splits get a
generic table below. Other split sets get one generic table of whatever ran, AVG over all of them.
When some split had no-target expressions (gRefCOCO, generalized shapes), a last table lists ReLA's
gRefCOCO columns per split: cIoU, gIoU, N-acc, T-acc, Pr@0.7/0.8/0.9. Values are percentages with
one decimal, as in the paper; the JSON keeps the raw fractions (every metric under ``metrics``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
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


def layout(results: Results) -> tuple[str, list[str], list[str]]:
    """``("table2" | "generic", columns of the main table, splits of the extra table)``."""
    if all(split in results for split in TABLE2_SPLITS):
        return "table2", list(TABLE2_SPLITS), [s for s in results if s not in TABLE2_SPLITS]
    return "generic", list(results), []


def results_record(results: Results, stage: str, model: str) -> dict[str, Any]:
    """The JSON record: layout, columns, every split's metrics and the AVG of the main columns."""
    kind, columns, extra = layout(results)
    return {
        "stage": stage,
        "model": model,
        "layout": kind,
        "columns": columns,
        "extra_columns": extra,
        **{m: {s: float(results[s][m]) for s in results} for m in METRICS},
        "avg": {m: _mean(results[s][m] for s in columns) for m in METRICS},
        "metrics": {s: {m: float(v) for m, v in results[s].items()} for s in results},
    }


def results_markdown(results: Results, stage: str, model: str) -> str:
    """One table per metric in the `layout`, plus a generic table of the extra splits."""
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
            values = [_percent(results[split].get(m, float("nan"))) for m in GENERALIZED]
            lines.append("| " + " | ".join([_title(split), *values]) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(results: Results, stage: str, directory: str | Path, model: str) -> tuple[Path, Path]:
    """Write ``<directory>/results_<stage>.md`` and ``.json``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md, js = directory / f"results_{stage}.md", directory / f"results_{stage}.json"
    md.write_text(results_markdown(results, stage, model))
    js.write_text(json.dumps(results_record(results, stage, model), indent=2) + "\n")
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


__all__ = ["TABLE2_SPLITS", "layout", "results_markdown", "results_record", "write_results"]
