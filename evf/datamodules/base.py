"""What every EVF DataModule shares: batch building, epoch-keyed sampling, one loader per split.

Datasets implement `EVFDataset`: ``sample(index, epoch) -> Sample``, a pure function of its
arguments and the dataset's seed (an evaluation dataset in skip mode may return a `SkippedItem`,
which `EvaluationCollate` leaves out of the batch and lists in ``batch.failures``). The sampler
yields ``(epoch, index)`` keys, so the draws of an epoch do not depend on worker processes or on
which rank asks. Distribution across processes is
done here (Lightning's sampler replacement is switched off by the CLI): training shards are equal
length per rank; evaluation shards are disjoint and unpadded, so every expression counts once.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from evf.batch import Batch, BatchBuilder
from evf.cache.store import EmbeddingStore
from evf.datamodules.sample import Sample, SkippedItem
from evf.encoders import build_preprocessor
from evf.lightning_compat import training_batches_done
from evf.sam_backends import backend_image_spec

log = logging.getLogger(__name__)

KeyT = TypeVar("KeyT")


class EVFDataset(Dataset, ABC):
    """A map-style dataset keyed by ``(epoch, index)``.

    ``kind_names``: the expression kinds (`Sample.kinds`) the dataset may tag; evaluation reports
    every metric per declared kind as well (e.g. gRefCOCO's ``no_target``). Empty: none.
    """

    kind_names: tuple[str, ...] = ()

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def sample(self, index: int, epoch: int) -> Sample | SkippedItem:
        """The sample at ``index`` for ``epoch`` (epoch only changes random choices, e.g. which
        expressions of an image are drawn in training)."""

    def __getitem__(self, key: tuple[int, int] | int) -> Sample | SkippedItem:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.sample(index, epoch)

    def image_key(self, index: int) -> str:
        """Names the picture of item ``index``: the same key for every dataset reading the same
        picture, different keys for different pictures. The embedding cache plans, deduplicates
        and resumes by it (and checks the pixels by hash). The default goes through
        ``sample(index, 0)``; datasets override it with a path that decodes nothing."""
        return self.sample(index, 0).image_id

    def load_image(self, index: int) -> np.ndarray:
        """The uint8 ``[H,W,3]`` image of item ``index``, without drawing expressions. The default
        goes through ``sample(index, 0)``; datasets override it with a cheaper path."""
        return self.sample(index, 0).image


class EvaluationCollate:
    """The collate of evaluation loaders: a batch of the readable samples; each `SkippedItem` is left
    out and listed in ``batch.failures`` (``{"image", "error"}``), so that evaluation counts it
    instead of evaluating a substitute. A batch may then hold no image."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder

    def __call__(self, items: list[Sample | SkippedItem]) -> Batch:
        batch = self.builder([item for item in items if isinstance(item, Sample)])
        batch.failures = [
            {"image": item.image_id, "error": item.reason} for item in items if isinstance(item, SkippedItem)
        ]
        return batch


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process (``(0, 1)`` without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[KeyT], ABC):
    """A sampler whose draws are a function of the epoch, resumable mid-epoch (`ResumableDataLoader`).

    `resume` makes the next pass over an epoch skip the draws a checkpointed run had consumed;
    ``len()`` stays the full epoch's (Lightning keeps counting from the restored batch index).
    Subclasses drop `_pop_skip` draws (counted over all ranks) before sharding an epoch's draws.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._skip: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """Continue inside ``epoch``: its next pass skips the first ``consumed`` draws (all ranks)."""
        self.epoch = epoch
        self._skip = {epoch: consumed}

    @abstractmethod
    def signature(self) -> dict[str, int]:
        """What must match for a saved position to be meaningful."""

    def _pop_skip(self) -> int:
        """Draws of the current epoch this pass skips (those consumed before `resume`; later passes 0)."""
        return self._skip.pop(self.epoch, 0)


class EpochSampler(ResumableSampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: a permutation seeded by ``(seed, epoch)`` (or dataset order) sharded
    over ranks. ``even=True`` truncates to equal shards (training); ``even=False`` gives disjoint,
    unpadded shards (evaluation: each item exactly once). Resumable as `ResumableSampler`.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, even: bool = True) -> None:
        super().__init__()
        self.size, self.seed, self.shuffle, self.even = size, seed, shuffle, even

    def signature(self) -> dict[str, int]:
        return {"seed": self.seed, "size": self.size}

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = rank_world()
        indices = self._indices()
        if self.even:
            indices = indices[: (self.size // world) * world]
        indices = indices[self._pop_skip() :]
        return iter([(self.epoch, i) for i in indices[rank::world]])

    def __len__(self) -> int:
        rank, world = rank_world()
        if self.even:
            return self.size // world
        return math.ceil(max(self.size - rank, 0) / world)


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose position inside the epoch Lightning keeps in checkpoints.

    Lightning calls ``state_dict()`` when it saves a checkpoint and ``load_state_dict()`` when it
    resumes, before the first batch. The state is the sampler's epoch and how many of its draws the
    training loop had finished (``batches_done()`` x batch size x world size); a checkpoint taken
    at the end of an epoch points at the start of the next. Setting the epoch here matters: on
    resume Lightning creates the worker iterator before it calls ``set_epoch``.

    The sampler is a `ResumableSampler`.
    """

    def __init__(
        self, dataset: Dataset, sampler: ResumableSampler, batches_done: Callable[[], int], **kwargs
    ) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict:
        batches = self.batches_done()
        epoch, consumed = self.sampler.epoch, batches * self.batch_size * rank_world()[1]
        if batches >= len(self):
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "consumed": consumed, "sampler": self.sampler.signature()}

    def load_state_dict(self, state: dict) -> None:
        if state["sampler"] != self.sampler.signature():
            log.warning(
                "the checkpoint's data order %s differs from this one %s: "
                "epoch %d restarts from its first draw",
                state["sampler"], self.sampler.signature(), state["epoch"],
            )  # fmt: skip
            self.sampler.resume(state["epoch"], 0)
            return
        self.sampler.resume(state["epoch"], state["consumed"])


class EVFDataModule(L.LightningDataModule, ABC):
    """Base DataModule: batches are prepared for the encoder and backend named in the config (the
    CLI links ``model.encoder`` / ``model.tokenizer`` / ``model.backend`` here).

    Args:
        encoder: registered encoder name (decides tokenizer and encoder image transform).
        tokenizer: tokenizer file or directory for that encoder (None = the encoder's default).
        backend: registered SAM backend name (decides the backend image transform).
        batch_size: images per training batch per process (each with up to a few expressions).
        eval_batch_size: images per validation/test batch.
        num_workers: DataLoader worker processes.
        seed: seed of the training order and of every random draw in the datasets.
        embedding_cache: directory of an embedding store (``evf cache-embeddings``): batches then
            carry the cached SAM image features instead of ``sam_pixels`` (the CLI sets
            ``model.use_embedding_cache`` from it). Refused when the datamodule augments
            (a datamodule that can augment exposes an ``augment`` attribute).
    """

    def __init__(
        self,
        encoder: str = "beit3_large",
        tokenizer: str | Path | None = None,
        backend: str = "sam_vit_h",
        batch_size: int = 16,
        eval_batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        embedding_cache: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.tokenizer, self.backend = encoder, tokenizer, backend
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.embedding_cache = embedding_cache
        self._builder: BatchBuilder | None = None
        self._store: EmbeddingStore | None = None

    @property
    def embedding_store(self) -> EmbeddingStore | None:
        """The opened ``embedding_cache`` (None without one).

        Raises:
            ValueError: the datamodule augments its images, which cached features cannot follow.
        """
        if self.embedding_cache is None:
            return None
        self.check_cacheable()
        if self._store is None:
            self._store = EmbeddingStore(self.embedding_cache)
        return self._store

    def check_cacheable(self) -> None:
        """Raise ValueError if this datamodule augments its images (cached features cannot follow)."""
        if getattr(self, "augment", False):
            raise ValueError(
                "an embedding cache cannot serve a datamodule that augments its images (augment: true): "
                "cached image features cannot follow random flips or colour changes; switch one of them off"
            )

    @property
    def builder(self) -> BatchBuilder:
        if self._builder is None:
            self._builder = BatchBuilder(
                build_preprocessor(self.encoder, self.tokenizer),
                backend_image_spec(self.backend),
                features=self.embedding_store,
            )
        return self._builder

    @abstractmethod
    def train_dataset(self) -> EVFDataset: ...

    @abstractmethod
    def eval_datasets(self, stage: str) -> dict[str, EVFDataset]:
        """Named splits for ``stage`` in ``{"validate", "test"}``; one dataloader (and metric) each."""

    def split_names(self, stage: str) -> list[str]:
        return list(self.eval_datasets(stage))

    def split_index_skipped(self, stage: str) -> list[int]:
        """Per split of ``stage``, the records its dataset dropped while building its index (``skip``
        mode): unreadable files that no batch will report, counted in the split's ``skipped``."""
        return [getattr(dataset, "index_skipped", 0) for dataset in self.eval_datasets(stage).values()]

    def split_kinds(self, stage: str) -> list[tuple[str, ...]]:
        """Per split of ``stage``, the expression kinds its dataset declares (`EVFDataset.kind_names`)."""
        return [tuple(dataset.kind_names) for dataset in self.eval_datasets(stage).values()]

    def _loader_kwargs(self, batch_size: int, train: bool) -> dict:
        return {
            "batch_size": batch_size,
            "collate_fn": self.builder if train else EvaluationCollate(self.builder),
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "drop_last": train,
        }

    def _loader(self, dataset: EVFDataset, batch_size: int, train: bool) -> DataLoader:
        sampler = EpochSampler(len(dataset), seed=self.seed, shuffle=train, even=train)
        return DataLoader(dataset, sampler=sampler, **self._loader_kwargs(batch_size, train))

    def resumable_loader(self, dataset: EVFDataset, sampler: ResumableSampler) -> ResumableDataLoader:
        """The training loader over ``sampler``, resumable mid-epoch from a checkpoint."""
        return ResumableDataLoader(
            dataset, sampler, self._batches_done, **self._loader_kwargs(self.batch_size, True)
        )

    def _batches_done(self) -> int:
        """Training batches of the current epoch the trainer has finished (restored on resume)."""
        return training_batches_done(self.trainer)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        return self.resumable_loader(dataset, EpochSampler(len(dataset), seed=self.seed))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, False) for d in self.eval_datasets("validate").values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size, False) for d in self.eval_datasets("test").values()]
