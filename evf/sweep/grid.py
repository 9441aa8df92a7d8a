"""Grid files: a YAML description of a sweep, and its expansion into named runs.

A grid file looks like::

    name: table3
    base: configs/recipes/refcoco.yaml      # default for `evf sweep --base`
    paper_table: table3                     # optional: which table of paper_tables.yaml it mirrors
    base_overrides:                         # applied to every run
      trainer.max_steps: 15000
    rows:                                   # optional explicit configurations
      - name: beit3_text
        paper_row: beit3_l_text
        model.encoder_kwargs.fusion: text
        model.encoder_kwargs.feature: cls_text
    axes:                                   # the cartesian product, crossed with every row
      seed_everything: [0, 1]
    resources: {partition: gpu, gpus_per_node: 4, timeout_min: 720}   # SLURM only
    validate: true                          # `evf validate` on the chosen checkpoint after fit
    test: false                             # `evf test` likewise
    checkpoint: best                        # best (falls back to last) or last
    seed_key: seed_everything               # the axis whose runs are averaged in the table

Keys are dotted LightningCLI keys; every run is ``evf fit --config BASE --key=value ...``. A dotted
key below a dict-valued argument (``model.encoder_kwargs.fusion``) merges into the base's dict; a
dict value (``model.encoder_kwargs: {fusion: text}``) replaces it. String values may use
environment variables (``$EVF_WEIGHTS/sam_vit_h_4b8939.pth``), expanded when the run starts.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

GRID_KEYS = (
    "name",
    "base",
    "paper_table",
    "axes",
    "rows",
    "base_overrides",
    "resources",
    "validate",
    "test",
    "checkpoint",
    "seed_key",
)
ROW_META_KEYS = ("name", "paper_row")
SHORT_LABELS = {"seed_everything": "seed"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


@dataclass(frozen=True)
class Run:
    """One configuration of a grid.

    Attributes:
        name: readable, deterministic name, e.g. ``encoder=beit3_tiny,fusion=early,seed=0``.
        overrides: dotted key -> value, in the order they are passed to the CLI.
        group: the name without its seed label (runs of one group differ only in the seed).
        paper_row: id of the matching row of the paper table (see ``paper_tables.yaml``).
    """

    name: str
    overrides: dict[str, Any]
    group: str
    paper_row: str | None = None

    @property
    def dirname(self) -> str:
        """The run's directory name: its name with path-unsafe characters replaced by ``_``."""
        return _UNSAFE.sub("_", self.name)

    def flags(self, expand_env: bool = True) -> list[str]:
        """The overrides as LightningCLI flags (see `override_flags`)."""
        return override_flags(self.overrides, expand_env)


@dataclass
class Grid:
    """A parsed grid file (see the module docstring for the schema)."""

    name: str
    axes: dict[str, list[Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    base_overrides: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    paper_table: str | None = None
    validate: bool = True
    test: bool = False
    checkpoint: Literal["best", "last"] = "best"
    seed_key: str = "seed_everything"

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_name: str = "sweep") -> Grid:
        """Validate a loaded grid mapping.

        Raises:
            ValueError: an unknown top-level key, an axis that is not a non-empty list, a row that
                is not a mapping, or a checkpoint choice other than best/last.
        """
        unknown = sorted(set(data) - set(GRID_KEYS))
        if unknown:
            raise ValueError(f"unknown grid key(s) {unknown}; allowed: {list(GRID_KEYS)}")
        axes = dict(data.get("axes") or {})
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"axis {key!r} must be a non-empty list of values, got {values!r}")
        rows = list(data.get("rows") or [])
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"rows[{i}] must be a mapping of overrides, got {row!r}")
        checkpoint = data.get("checkpoint", "best")
        if checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        return cls(
            name=str(data.get("name") or default_name),
            axes=axes,
            rows=rows,
            base_overrides=dict(data.get("base_overrides") or {}),
            resources=dict(data.get("resources") or {}),
            base=data.get("base"),
            paper_table=data.get("paper_table"),
            validate=bool(data.get("validate", True)),
            test=bool(data.get("test", False)),
            checkpoint=checkpoint,
            seed_key=str(data.get("seed_key", "seed_everything")),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Grid:
        """Read a grid YAML file; its name defaults to the file stem."""
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a grid file must be a mapping")
        return cls.from_dict(data, default_name=path.stem)

    def expand(self) -> list[Run]:
        """Every row crossed with the cartesian product of the axes, in file order.

        Overrides apply in the order base_overrides, row, axes. A key set both by a row and by an
        axis is ambiguous and raises, as do two runs whose directory names would collide.
        """
        rows = self.rows or [{}]
        labels = _short_labels([*self.axes, *(k for row in rows for k in row if k not in ROW_META_KEYS)])
        combos = list(itertools.product(*self.axes.values()))
        runs: list[Run] = []
        for row in rows:
            row_overrides = {k: v for k, v in row.items() if k not in ROW_META_KEYS}
            clash = sorted(set(row_overrides) & set(self.axes))
            if clash:
                raise ValueError(f"row {row.get('name', row_overrides)} sets axis key(s) {clash}")
            row_label = [str(row["name"])] if "name" in row else _labels(row_overrides, labels)
            for combo in combos:
                axis_values = dict(zip(self.axes, combo, strict=True))
                seedless = {k: v for k, v in axis_values.items() if k != self.seed_key}
                name = ",".join([*row_label, *_labels(axis_values, labels)]) or self.name
                group = ",".join([*row_label, *_labels(seedless, labels)]) or self.name
                overrides = {**self.base_overrides, **row_overrides, **axis_values}
                runs.append(Run(name, overrides, group, row.get("paper_row")))
        _check_unique(runs)
        return runs


def override_flags(overrides: dict[str, Any], expand_env: bool = True) -> list[str]:
    """``{"model.encoder": "clip", "model.encoder_kwargs": {"fusion": "late"}}`` ->
    ``["--model.encoder=clip", '--model.encoder_kwargs={"fusion": "late"}']``."""
    return [
        f"--{key}={format_value(_expand(value) if expand_env else value)}" for key, value in overrides.items()
    ]


def format_value(value: Any) -> str:
    """A value as jsonargparse reads it back: JSON for dicts/lists, ``true``/``null`` for bool/None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"))
    return str(value)  # floats include nan/inf, which jsonargparse reads back


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _short_labels(keys: Iterable[str]) -> dict[str, str]:
    """Label of each key in run names: its last dotted part, unless two keys share that part."""
    keys = list(dict.fromkeys(keys))
    short = {k: SHORT_LABELS.get(k, k.rsplit(".", 1)[-1]) for k in keys}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {k: (label if counts[label] == 1 else k) for k, label in short.items()}


def _labels(values: dict[str, Any], labels: dict[str, str]) -> list[str]:
    return [f"{labels[k]}={_name_value(v)}" for k, v in values.items()]


def _name_value(value: Any) -> str:
    if isinstance(value, dict):
        return "+".join(f"{k}={_name_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "+".join(_name_value(v) for v in value)
    return format_value(value)


def _check_unique(runs: list[Run]) -> None:
    dirs = [run.dirname for run in runs]
    clashes = sorted({d for d in dirs if dirs.count(d) > 1})
    if clashes:
        raise ValueError(f"several runs share the directory name(s) {clashes}: give the rows distinct names")
