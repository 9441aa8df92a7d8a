"""Datasets and LightningDataModules.

`EVFDataModule` (base.py) prepares batches for the configured encoder and backend and shards data
across processes; `ShapesDataModule` is the embedded synthetic default; `predict.py` holds the
prompted-images input and mask writer of `evf predict`.
"""

from evf.datamodules.base import BatchBuilder, EpochSampler, EVFDataModule, EVFDataset
from evf.datamodules.sample import Sample
from evf.datamodules.shapes_datamodule import ShapesDataModule

__all__ = ["BatchBuilder", "EVFDataModule", "EVFDataset", "EpochSampler", "Sample", "ShapesDataModule"]
