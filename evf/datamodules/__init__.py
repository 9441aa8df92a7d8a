"""Datasets and LightningDataModules.

`EVFDataModule` (base.py) prepares batches for the configured encoder and backend and shards data
across processes; `ShapesDataModule` is the embedded synthetic default; `predict.py` holds the
prompted-images inputs of `evf predict` (files, folders, manifests; the writer is `evf.prediction`).

The paper's datasets (docs/datasets.md has their layouts): `ReferDataset` (RefCOCO, RefCOCO+,
RefCOCOg, RefCLEF), `GRefCOCODataset`, `ADE20KDataset`, `MapillaryDataset`, `Objects365Dataset`,
`PartImageNetDataset`, `PascalPartDataset`, `HumanParsingDataset`. Your own annotations:
`ReferringJsonlDataset`, `MaskFolderDataset` (referents listed one by one, referents.py),
`CocoInstancesDataset`, `LabelMeDataset` (category labels through templates, categories.py). All
derive from `FileDataset` (common.py: seeded draws, ``on_bad_sample``, ``augment``).
`MixtureDataModule` (mixture.py) mixes any of them, described by `DatasetSpec` (catalog.py), with
sampling rates and a resumable sampler.
"""

from evf.datamodules.base import (
    BatchBuilder,
    EpochSampler,
    EVFDataModule,
    EVFDataset,
    ResumableDataLoader,
    ResumableSampler,
)
from evf.datamodules.catalog import DatasetSpec, build_dataset
from evf.datamodules.coco_instances import CocoInstancesDataset
from evf.datamodules.common import DataError, FileDataset
from evf.datamodules.grefcoco import GRefCOCODataset
from evf.datamodules.humanparsing import HumanParsingDataset
from evf.datamodules.jsonl import ReferringJsonlDataset
from evf.datamodules.labelme import LabelMeDataset
from evf.datamodules.mask_folder import MaskFolderDataset
from evf.datamodules.mixture import MixtureDataModule, MixtureDataset, MixtureSampler
from evf.datamodules.objects365 import Objects365Dataset
from evf.datamodules.parts import PartImageNetDataset, PascalPartDataset, PascalPartMatDataset
from evf.datamodules.refer import ReferDataset
from evf.datamodules.sample import Sample, SkippedItem
from evf.datamodules.semantic import ADE20KDataset, MapillaryDataset
from evf.datamodules.shapes_datamodule import ShapesDataModule

__all__ = [
    "ADE20KDataset",
    "BatchBuilder",
    "CocoInstancesDataset",
    "DataError",
    "DatasetSpec",
    "EVFDataModule",
    "EVFDataset",
    "EpochSampler",
    "FileDataset",
    "GRefCOCODataset",
    "HumanParsingDataset",
    "LabelMeDataset",
    "MapillaryDataset",
    "MaskFolderDataset",
    "MixtureDataModule",
    "MixtureDataset",
    "MixtureSampler",
    "Objects365Dataset",
    "PartImageNetDataset",
    "PascalPartDataset",
    "PascalPartMatDataset",
    "ReferDataset",
    "ReferringJsonlDataset",
    "ResumableDataLoader",
    "ResumableSampler",
    "Sample",
    "ShapesDataModule",
    "SkippedItem",
    "build_dataset",
]
