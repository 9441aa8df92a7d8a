"""The sweep table: one row per run (and per configuration, mean ± std over seeds), shaped like the
paper's ablation tables: cIoU and gIoU of every evaluated split, their AVG (mean cIoU), parameter
counts, wall time, status and error. Writes ``report.md``, ``report.csv`` and, when some
configuration ran with several seeds, ``report_grouped.csv``.

Metrics are shown in percent, as in the paper. With ``paper=True`` each run that names a
``paper_row`` gets the published numbers of that row beside it (``evf/sweep/paper_tables.yaml``);
a number the table file does not hold is shown as ``missing``.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evf.sweep.runner import headline_metrics, read_status

PAPER_TABLES = Path(__file__).with_name("paper_tables.yaml")
MANIFEST = "sweep.json"
STAGE_PREFIX = {"val/": "", "test/": "test "}
MAX_CELL = 120  # characters of an error shown in the Markdown table (the CSV has it all)


@dataclass
class Row:
    """One line of a table: a label and column -> value (numbers unformatted, percent)."""

    label: str
    values: dict[str, Any]


def load_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    """Statuses of the sweep's runs: in the manifest's order, else every ``*/status.json`` by name."""
    sweep_dir = Path(sweep_dir)
    manifest = sweep_dir / MANIFEST
    if manifest.exists():
        dirs = [sweep_dir / d for d in json.loads(manifest.read_text())["runs"]]
    else:
        dirs = sorted(p.parent for p in sweep_dir.glob("*/status.json"))
    return [s for s in (read_status(d) for d in dirs) if s is not None]


def metric_columns(statuses: list[dict[str, Any]]) -> list[str]:
    """Columns ``<split> cIoU`` / ``<split> gIoU`` (``test <split> ...`` for test), in first-seen order."""
    columns = (_column_of(key) for status in statuses for key in headline_metrics(status))
    return list(dict.fromkeys(c for c in columns if c))


def run_rows(statuses: list[dict[str, Any]], columns: list[str]) -> list[Row]:
    """One row per run: metric columns, AVG, parameters (M), wall time, status, error."""
    rows = []
    for status in statuses:
        values: dict[str, Any] = {c: None for c in columns}
        for key, value in headline_metrics(status).items():
            column = _column_of(key)
            if column in values:
                values[column] = 100.0 * value
        cious = [values[c] for c in columns if c.endswith("cIoU") and values[c] is not None]
        values["AVG"] = statistics.fmean(cious) if cious else None
        params = status.get("params") or {}
        values["params (M)"] = params["total"] / 1e6 if params else None
        values["trainable (M)"] = params["trainable"] / 1e6 if params else None
        values["wall time"] = status.get("wall_time_s")
        values["status"] = status["status"]
        values["error"] = status.get("error") or ""
        values["paper_row"] = status.get("paper_row")
        values["group"] = status.get("group") or status["name"]
        rows.append(Row(status["name"], values))
    return rows


def group_rows(rows: list[Row], columns: list[str]) -> list[Row]:
    """One row per configuration: mean and standard deviation of the finished runs' numbers."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.values["group"], []).append(row)
    out = []
    for label, members in groups.items():
        done = [r for r in members if r.values["status"] == "done"]
        values: dict[str, Any] = {"runs": f"{len(done)}/{len(members)}"}
        for column in [*columns, "AVG"]:
            numbers = [r.values[column] for r in done if r.values[column] is not None]
            values[column] = _mean_std(numbers)
        values["params (M)"] = members[0].values["params (M)"]
        values["trainable (M)"] = members[0].values["trainable (M)"]
        out.append(Row(label, values))
    return out


def paper_values(rows: list[Row], table: str | None, columns: list[str]) -> None:
    """Add ``paper AVG`` and ``paper <column>`` to rows that name a paper row (in place)."""
    tables = yaml.safe_load(PAPER_TABLES.read_text())["tables"]
    for row in rows:
        ref = row.values.get("paper_row")
        if not ref:
            continue
        name, _, row_id = ref.rpartition("/") if "/" in ref else (table, "", ref)
        paper = ((tables.get(name) or {}).get("rows") or {}).get(row_id)
        if paper is None:
            raise KeyError(f"paper row {ref!r} is not in {PAPER_TABLES.name} (tables: {sorted(tables)})")
        ciou = paper.get("ciou") or {}
        row.values["paper AVG"] = _or_missing(paper.get("avg"))
        for column in columns:
            if column.endswith("cIoU"):
                row.values[f"paper {column}"] = _or_missing(ciou.get(column.removesuffix(" cIoU")))


def _or_missing(value: float | None) -> float | str:
    return "missing" if value is None else value


def write_report(sweep_dir: Path, paper: bool = False) -> str:
    """Write ``report.md``, ``report.csv`` (+ ``report_grouped.csv``) in ``sweep_dir``; return the text."""
    sweep_dir = Path(sweep_dir)
    statuses = load_statuses(sweep_dir)
    columns = metric_columns(statuses)
    rows = run_rows(statuses, columns)
    manifest = json.loads((sweep_dir / MANIFEST).read_text()) if (sweep_dir / MANIFEST).exists() else {}
    paper_columns: list[str] = []
    if paper:
        paper_values(rows, manifest.get("paper_table"), columns)
        paper_columns = ["paper AVG", *(f"paper {c}" for c in columns if c.endswith("cIoU"))]
    run_columns = [
        *columns,
        "AVG",
        *paper_columns,
        "params (M)",
        "trainable (M)",
        "wall time",
        "status",
        "error",
    ]
    _write_csv(sweep_dir / "report.csv", ["run", *run_columns], rows)

    counts = {s: sum(r.values["status"] == s for r in rows) for s in ("done", "failed", "running", "pending")}
    lines = [f"# Sweep `{manifest.get('name', sweep_dir.name)}`", ""]
    if manifest:
        lines += [f"base `{manifest.get('base')}`, grid `{manifest.get('grid')}`", ""]
    lines += [", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs", ""]
    lines += ["## Runs", "", *_markdown(["run", *run_columns], rows)]
    groups = group_rows(rows, columns)
    if len(groups) < len(rows):
        group_columns = ["runs", *columns, "AVG", "params (M)", "trainable (M)"]
        lines += ["", "## Mean ± std over seeds", "", *_markdown(["config", *group_columns], groups)]
        _write_csv(sweep_dir / "report_grouped.csv", ["config", *group_columns], groups)
    if paper:
        lines += ["", "`missing`: the paper's number is not in `evf/sweep/paper_tables.yaml` (unverified)."]
    text = "\n".join(lines) + "\n"
    (sweep_dir / "report.md").write_text(text)
    return text


def _mean_std(numbers: list[float]) -> tuple[float, float | None] | None:
    if not numbers:
        return None
    return statistics.fmean(numbers), statistics.stdev(numbers) if len(numbers) > 1 else None


def _column_of(key: str) -> str | None:
    for prefix, label in STAGE_PREFIX.items():
        rest = key[len(prefix) :]  # "<split>/<metric>"; the pooled "val/ciou" has no split: no column
        if key.startswith(prefix) and key.endswith(("/ciou", "/giou")) and "/" in rest:
            split, name = rest.rsplit("/", 1)
            return f"{label}{split} {'cIoU' if name == 'ciou' else 'gIoU'}"
    return None


def _format(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"
    if column == "wall time":
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes}m{seconds:02d}s"
    if column.endswith("(M)"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _markdown(header: list[str], rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(
            "| " + " | ".join([row.label, *(_format(c, row.values.get(c)) for c in header[1:])]) + " |"
        )
    return lines


def _write_csv(path: Path, header: list[str], rows: list[Row]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.label, *(_csv_value(row.values.get(c)) for c in header[1:])])


def _csv_value(value: Any) -> Any:
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    if isinstance(value, float):
        return round(value, 4)
    return "" if value is None else value
