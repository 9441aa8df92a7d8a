"""``evf data-check``: read every sample of every split of a data config, as training reads it, and report.

    evf data-check --config my_data.yaml [--out data_check.png] [--preview 16]
    evf data-check --config configs/evf_sam_h_beit3_l.yaml --config my_data.yaml   # the model's tokenizer

The config goes through the real `EVFCLI` parser (the ``data`` section with ``class_path`` /
``init_args``, the same files ``evf fit`` takes); only the datamodule is built. A
`MixtureDataModule` has each of its dataset specs (training, validation, test) built as evaluation
builds them: every expression of every item, wrong records skipped and recorded whatever
``on_bad_sample`` says, so that one run lists them all. Other datamodules are read through their
training dataset and evaluation splits.

Printed per split: images, expressions by kind (`Sample.kinds`), no-target expressions, expression
length in words and in tokens of the configured encoder's tokenizer, and how many exceed its limit
(truncated in training). Then every bad record (file, line or id, reason) and the preview grid
(``--out``: a PNG of up to ``--preview`` expressions, one per image, ground truth filled and
outlined). Exit status 1 if any record is bad, else 0.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.cli import LightningArgumentParser
from PIL import Image

from evf.cli import EVFCLI
from evf.datamodules import DataError, EVFDataModule, EVFDataset, MixtureDataModule, Sample, build_dataset
from evf.datamodules.common import FileDataset
from evf.encoders import build_preprocessor
from evf.io import ImageReadError
from evf.visualize import truth_grid

OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("out", Path, Path("data_check.png"), "The preview grid PNG."),
    ("preview", int, 16, "Expressions in the preview grid (spread over the splits; 0: no PNG)."),
]
"""The tool's own options: (name, type, default, help)."""


@dataclass
class SplitReport:
    """What one split holds."""

    name: str
    images: int = 0
    kinds: Counter = field(default_factory=Counter)
    no_target: int = 0
    words: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    void: int = 0  # void shapes (LabelMe's __ignore__ and void_labels)
    void_pixels: int = 0  # in the items checked
    preview: list[tuple[np.ndarray, np.ndarray, list[str]]] = field(default_factory=list)

    def add(self, sample: Sample, preview: int) -> None:
        self.images += 1
        self.void_pixels += 0 if sample.void is None else int(sample.void.sum())
        self.kinds.update(kind or "untagged" for kind in (sample.kinds or [""] * len(sample.texts)))
        self.no_target += int((~sample.masks.reshape(len(sample.texts), -1).any(axis=1)).sum())
        self.words += [len(t.split()) for t in sample.texts]
        self.texts += sample.texts
        if len(self.preview) < preview:  # one expression per image: the preview shows several images
            k = len(self.preview) % len(sample.texts)
            self.preview.append((sample.image, sample.masks[k], [sample.texts[k], sample.image_id]))


def checked_datasets(datamodule: EVFDataModule) -> tuple[dict[str, EVFDataset], list[str]]:
    """The datasets to read, by split name, and the splits that could not be built (with why)."""
    if not isinstance(datamodule, MixtureDataModule):
        named = {"train": datamodule.train_dataset()}
        for stage in ("validate", "test"):
            named.update({f"{stage}:{n}": d for n, d in datamodule.eval_datasets(stage).items()})
        return named, []
    named, failed = {}, []
    for stage, specs in datamodule.specs.items():
        for spec in specs:
            name = f"{stage}:{spec.label}"
            try:
                named[name] = build_dataset(
                    spec, seed=datamodule.seed, max_expressions=None, on_bad_sample="skip"
                )
            except (DataError, ValueError) as err:
                failed.append(f"{name}: {err}")
    return named, failed


def read_split(name: str, dataset: EVFDataset, preview: int) -> SplitReport:
    """Every item of ``dataset``; bad ones recorded, not raised."""
    report = SplitReport(name)
    for index in range(len(dataset)):
        try:
            item = dataset.sample(index, 0)
        except (DataError, ImageReadError) as err:
            report.bad.append(f"item {index}: {err}")
            continue
        if isinstance(item, Sample):
            report.add(item, preview)
    if isinstance(dataset, FileDataset):
        report.bad = dataset.bad_records + report.bad
    report.void = getattr(dataset, "void_shapes", 0)
    return report


def _stats(values: list[int]) -> str:
    return f"min {min(values)}, mean {np.mean(values):.1f}, max {max(values)}" if values else "none"


def token_summary(texts: list[str], tokenizer: Any) -> str:
    lengths = tokenizer.lengths(texts)
    truncated = sum(n > tokenizer.max_length for n in lengths)
    return f"tokens {_stats(lengths)} (limit {tokenizer.max_length}; truncated {truncated})"


class DataCheckCLI(EVFCLI):
    """`EVFCLI` that parses a training config, builds its datamodule only and checks its data."""

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(args=args, run=False)
        self.check()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        group = parser.add_argument_group("Data check")
        for name, type_, default, help_ in OPTIONS:
            group.add_argument(f"--{name}", type=type_, default=default, help=help_)

    def instantiate_classes(self) -> None:
        """The datamodule only (class groups such as the model are not built, not even by default)."""
        config = self.parser.instantiate(self.config, instantiate_groups=False)
        self.datamodule: EVFDataModule = config["data"]
        self.model, self.trainer = None, None

    def check(self) -> None:
        cfg = self.config
        datasets, failed = checked_datasets(self.datamodule)
        try:
            tokenizer = build_preprocessor(self.datamodule.encoder, self.datamodule.tokenizer).tokenizer
        except (ValueError, OSError) as err:
            tokenizer, why = None, str(err)
        quota = -(-cfg.preview // max(len(datasets), 1))  # preview tiles per split, rounded up
        reports = [read_split(name, dataset, quota) for name, dataset in datasets.items()]
        print(f"data check: encoder {self.datamodule.encoder}")
        for report in reports:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items()))
            print(f"{report.name}: {report.images} images, {len(report.texts)} expressions ({kinds}); "
                  f"{report.no_target} no-target")  # fmt: skip
            tokens = token_summary(report.texts, tokenizer) if tokenizer else f"tokens not counted ({why})"
            print(f"  words {_stats(report.words)}; {tokens}")
            if report.void:
                print(
                    f"  void (__ignore__, void_labels): {report.void} shapes, {report.void_pixels:,} pixels "
                    "in the items checked; left out of the loss and the metrics"
                )
        bad = failed + [f"{r.name}: {line}" for r in reports for line in r.bad]
        print(f"bad records: {len(bad)}")
        for line in bad:
            print(f"  {line}")
        entries = [e for r in reports for e in r.preview][: cfg.preview]
        if cfg.preview > 0 and entries:
            Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(truth_grid(entries)).save(cfg.out)
            print(f"preview: {cfg.out} ({len(entries)} expressions, ground truth filled and outlined)")
        if bad:
            sys.stdout.flush()
            raise SystemExit(1)
