"""Multi-task training: several datasets mixed by sampling rates, resumable mid-epoch.

* `MixtureDataset` puts datasets behind one key space: ``(epoch, dataset_id, index)``.
* `MixtureSampler` draws a fixed number of keys per epoch, a pure function of ``(seed, epoch)``,
  and shards them over ranks.
* `ResumableDataLoader` (from base.py) lets Lightning save the position inside the epoch and,
  on resume, skip the consumed draws so the remaining ones are replayed exactly.
* `MixtureDataModule` builds all of it from `DatasetSpec` lists (training mixture, named
  validation and test splits); ``configs/recipes/`` holds the paper's recipes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from evf.datamodules.base import EVFDataModule, EVFDataset, ResumableDataLoader, ResumableSampler, rank_world
from evf.datamodules.catalog import DatasetSpec, build_dataset
from evf.datamodules.common import OnBadSample, item_rng
from evf.datamodules.sample import Sample

log = logging.getLogger(__name__)

Key = tuple[int, int, int]  # (epoch, dataset_id, index)
_MIX_STREAM = 0x3A1


class MixtureDataset(EVFDataset):
    """Datasets side by side. ``dataset[(epoch, d, i)]`` is item ``i`` of dataset ``d``;
    ``sample(index, epoch)`` reads the datasets as one concatenation."""

    def __init__(self, datasets: Sequence[EVFDataset]) -> None:
        if not datasets:
            raise ValueError("a mixture needs at least one dataset")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def sample(self, index: int, epoch: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"mixture index {index} out of range for {len(self)} items")
        d = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.datasets[d].sample(index - int(self.offsets[d]), epoch)

    def __getitem__(self, key: Key | tuple[int, int] | int) -> Sample:
        if isinstance(key, tuple) and len(key) == 3:
            epoch, d, index = key
            return self.datasets[d].sample(index, epoch)
        return super().__getitem__(key)


class MixtureSampler(ResumableSampler[Key]):
    """``num_samples`` keys ``(epoch, dataset_id, index)`` per epoch, over all ranks together.

    Each draw picks dataset ``d`` with probability ``rates[d] / sum(rates)``; dataset ``d`` then
    hands out the indices of a permutation seeded by ``(seed, epoch, d)`` in order (restarting it
    when used up), so its items are covered before any repeats. The keys depend on ``(seed, epoch)``
    only. Rank ``r`` of ``w`` gets draws ``r, r + w, ...`` of the first ``w * (num_samples // w)``.
    Resumable as `ResumableSampler`.
    """

    def __init__(self, sizes: Sequence[int], rates: Sequence[float], num_samples: int, seed: int = 0) -> None:
        if len(sizes) != len(rates) or not sizes:
            raise ValueError(f"need one rate per dataset, got {len(rates)} rates for {len(sizes)} datasets")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every dataset of a mixture needs items, got sizes {list(sizes)}")
        if any(r < 0 for r in rates) or sum(rates) <= 0 or not all(math.isfinite(r) for r in rates):
            raise ValueError(f"rates must be finite, non-negative and not all zero, got {list(rates)}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.probs = np.asarray(rates, dtype=np.float64) / float(sum(rates))
        self.num_samples, self.seed = num_samples, seed

    def signature(self) -> dict[str, int]:
        return {"seed": self.seed, "num_samples": self.num_samples}

    def draws(self, epoch: int) -> list[tuple[int, int]]:
        """``(dataset_id, index)`` of every draw of ``epoch``, over all ranks, in order."""
        which = item_rng(self.seed, _MIX_STREAM, epoch).choice(
            len(self.sizes), size=self.num_samples, p=self.probs
        )
        indices = np.zeros(self.num_samples, dtype=np.int64)
        for d, size in enumerate(self.sizes):
            slots = np.flatnonzero(which == d)
            rng = item_rng(self.seed, _MIX_STREAM, epoch, d)
            laps = [rng.permutation(size) for _ in range(math.ceil(len(slots) / size))]
            indices[slots] = np.concatenate(laps or [np.zeros(0, dtype=np.int64)])[: len(slots)]
        return list(zip(which.tolist(), indices.tolist(), strict=True))

    def __iter__(self) -> Iterator[Key]:
        rank, world = rank_world()
        draws = self.draws(self.epoch)[self._pop_skip() : (self.num_samples // world) * world]
        return iter([(self.epoch, d, i) for d, i in draws[rank::world]])

    def __len__(self) -> int:
        return self.num_samples // rank_world()[1]


class MixtureDataModule(EVFDataModule):
    """Training on a mixture of datasets with sampling rates; any number of named eval splits.

    Args:
        train: the training mixture, each entry with its sampling ``rate``.
        val: validation splits, each its own dataloader and metric (named ``<kind>/<split>``
            unless ``name`` is set).
        test: test splits, as ``val``.
        samples_per_epoch: images drawn per training epoch, over all processes together.
        max_expressions: expressions per training image (the paper: up to 3).
        augment: in training, random horizontal flips (swapping "left" and "right" in the texts)
            and brightness/contrast jitter, seeded per (seed, epoch, index).
        on_bad_sample: ``error`` stops at wrong data; ``skip`` logs it and counts it: training moves
            on to the next valid item, evaluation leaves the item out (``val/<split>/skipped``).
        **kwargs: the shared options of `EVFDataModule` (``encoder``, ``batch_size``, ``seed``,
            ``embedding_cache``, ...; the cache is refused with ``augment: true``).
    """

    def __init__(
        self,
        train: list[DatasetSpec] | None = None,
        val: list[DatasetSpec] | None = None,
        test: list[DatasetSpec] | None = None,
        samples_per_epoch: int = 80_000,
        max_expressions: int = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.specs = {"train": list(train or []), "validate": list(val or []), "test": list(test or [])}
        for stage in ("validate", "test"):
            labels = [s.label for s in self.specs[stage]]
            if len(set(labels)) != len(labels):
                raise ValueError(f"{stage} split names repeat: {labels}; give the entries distinct `name`s")
        self.samples_per_epoch = samples_per_epoch
        self.max_expressions = max_expressions
        self.augment = augment
        self.on_bad_sample = on_bad_sample
        self._train: MixtureDataset | None = None
        self._eval: dict[str, dict[str, EVFDataset]] = {}

    def train_dataset(self) -> MixtureDataset:
        if self._train is None:
            if not self.specs["train"]:
                raise ValueError("no training datasets: set data.init_args.train to a list of dataset specs")
            options = {"seed": self.seed, "max_expressions": self.max_expressions, "augment": self.augment}
            datasets = [
                build_dataset(s, on_bad_sample=self.on_bad_sample, **options) for s in self.specs["train"]
            ]
            empty = [s.label for s, d in zip(self.specs["train"], datasets, strict=True) if len(d) == 0]
            if empty:
                raise ValueError(f"training datasets without a usable item: {empty}")
            self._train = MixtureDataset(datasets)
        return self._train

    def eval_datasets(self, stage: str) -> dict[str, EVFDataset]:
        if stage not in self._eval:
            self._eval[stage] = {
                s.label: build_dataset(
                    s, seed=self.seed, max_expressions=None, on_bad_sample=self.on_bad_sample
                )
                for s in self.specs[stage]
            }
        return self._eval[stage]

    def train_dataloader(self) -> ResumableDataLoader:
        dataset = self.train_dataset()
        rates = [s.rate for s in self.specs["train"]]
        sampler = MixtureSampler([len(d) for d in dataset.datasets], rates, self.samples_per_epoch, self.seed)
        return self.resumable_loader(dataset, sampler)
