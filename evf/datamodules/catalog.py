"""The dataset kinds a config can name, and `DatasetSpec`: one dataset split as plain, typed data.

    DatasetSpec(kind="refcoco", root="/data/refer_seg", split="testA")
    DatasetSpec(kind="mapillary", root="/data/mapillary", rate=0.5, options={"version": "v1.2"})

``kind`` picks the dataset class (`KINDS`), ``options`` are that class's format-specific keyword
arguments (``split_by``, ``version``, ``annotations``, ``image_dir``, ``templates``, ...).
docs/datasets.md lists the folder layout of each kind, your own annotations' formats included.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from evf.datamodules.coco_instances import CocoInstancesDataset
from evf.datamodules.common import DataError, FileDataset, OnBadSample
from evf.datamodules.grefcoco import GRefCOCODataset
from evf.datamodules.humanparsing import HumanParsingDataset
from evf.datamodules.jsonl import ReferringJsonlDataset
from evf.datamodules.labelme import LabelMeDataset
from evf.datamodules.mask_folder import MaskFolderDataset
from evf.datamodules.objects365 import Objects365Dataset
from evf.datamodules.parts import PartImageNetDataset, PascalPartDataset, PascalPartMatDataset
from evf.datamodules.refer import ReferDataset
from evf.datamodules.semantic import ADE20KDataset, MapillaryDataset

DatasetKind = Literal[
    "refcoco", "refcoco+", "refcocog", "refclef", "grefcoco", "ade20k", "mapillary", "objects365",
    "partimagenet", "pascal_part", "pascal_part_mat", "humanparsing",
    "referring_jsonl", "coco_instances", "labelme", "mask_folder",
]  # fmt: skip

KINDS = {
    "refcoco": partial(ReferDataset, dataset="refcoco"),
    "refcoco+": partial(ReferDataset, dataset="refcoco+"),
    "refcocog": partial(ReferDataset, dataset="refcocog"),
    "refclef": partial(ReferDataset, dataset="refclef"),
    "grefcoco": GRefCOCODataset,
    "ade20k": ADE20KDataset,
    "mapillary": MapillaryDataset,
    "objects365": Objects365Dataset,
    "partimagenet": PartImageNetDataset,
    "pascal_part": PascalPartDataset,
    "pascal_part_mat": PascalPartMatDataset,
    "humanparsing": HumanParsingDataset,
    # your own annotations
    "referring_jsonl": ReferringJsonlDataset,
    "coco_instances": CocoInstancesDataset,
    "labelme": LabelMeDataset,
    "mask_folder": MaskFolderDataset,
}
"""Dataset kind -> class (called with root, split, the options and the common arguments)."""


@dataclass
class DatasetSpec:
    """One dataset split, for a training mixture or as a named evaluation split.

    Attributes:
        kind: dataset family and format (see docs/datasets.md).
        root: the dataset folder; null in shipped configs (set it to your copy).
        split: split of that dataset (``train``, ``val``, ``testA``, ...).
        rate: sampling rate in a training mixture, relative to the other entries.
        name: split name in logs and metrics (None = ``<kind>/<split>``).
        options: format-specific keyword arguments of the dataset class (e.g. ``split_by``,
            ``version``, ``annotations``, ``image_dir``).
    """

    kind: DatasetKind
    root: str | None = None
    split: str = "train"
    rate: float = 1.0
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The split name used in logs and metrics."""
        return self.name or f"{self.kind}/{self.split}"


def build_dataset(
    spec: DatasetSpec,
    *,
    seed: int,
    max_expressions: int | None,
    augment: bool = False,
    on_bad_sample: OnBadSample = "error",
) -> FileDataset:
    """The dataset a spec describes (reads its annotation files).

    Raises:
        ValueError: unknown kind, no root, or an option the dataset class does not take.
        DataError: the files are missing or wrong (the message names them).
    """
    if spec.kind not in KINDS:
        raise ValueError(f"unknown dataset kind {spec.kind!r}; expected one of {sorted(KINDS)}")
    if spec.root is None:
        raise ValueError(
            f"{spec.label}: `root` is not set; point it at your copy of {spec.kind} (see docs/datasets.md)"
        )
    if not Path(spec.root).is_dir():
        raise DataError(f"{spec.label}: root folder not found: {spec.root}")
    common = {
        "seed": seed,
        "max_expressions": max_expressions,
        "augment": augment,
        "on_bad_sample": on_bad_sample,
    }
    clash = sorted(set(spec.options) & {*common, "root", "split", "dataset"})
    if clash:
        raise ValueError(
            f"{spec.label}: options {clash} are set by the datamodule or the spec itself, not in options"
        )
    factory = KINDS[spec.kind]
    try:
        inspect.signature(factory).bind(spec.root, split=spec.split, **spec.options, **common)
    except TypeError as err:
        raise ValueError(f"{spec.label}: bad options {sorted(spec.options)} for {spec.kind}: {err}") from None
    return factory(spec.root, split=spec.split, **spec.options, **common)
