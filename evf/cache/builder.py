"""Filling an embedding store: plan a datamodule's images, encode one shard of them, write it.

The plan is every image the datamodule uses (its training dataset and every validation and test
split), deduplicated by `ImageDataset.image_key` and sorted by it, so every process computes the same
plan without talking to the others. Shard ``i`` of ``n`` takes plan entries ``i, i + n, ...``.
Images are loaded and preprocessed in DataLoader workers; the frozen image encoder runs under
``torch.inference_mode`` (its outputs only go to disk).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from evf.cache.keys import CacheKey, pixel_hash
from evf.cache.store import ShardWriter, StoreDtype, shard_name
from evf.preprocessing import ImageSpec
from evf.sam_backends import SamBackend

log = logging.getLogger(__name__)


class ImageDataset(Protocol):
    """What the cache needs of a dataset (`evf.datamodules.EVFDataset` is one): typed structurally,
    so that the cache, which the datamodules use, does not import them."""

    def __len__(self) -> int: ...

    def image_key(self, index: int) -> str: ...

    def load_image(self, index: int) -> np.ndarray: ...


class ImageDataModule(Protocol):
    """What the cache needs of a datamodule (`evf.datamodules.EVFDataModule` is one)."""

    def train_dataset(self) -> ImageDataset: ...

    def eval_datasets(self, stage: str) -> dict[str, ImageDataset]: ...


@dataclass(frozen=True)
class PlannedImage:
    """One picture to encode: its key and where to load it from (the first dataset naming it)."""

    key: str
    dataset: ImageDataset
    index: int


def datamodule_datasets(datamodule: ImageDataModule) -> list[tuple[str, ImageDataset]]:
    """``(name, dataset)`` of the training set and of every validation and test split."""
    named = [("train", datamodule.train_dataset())]
    for stage in ("validate", "test"):
        named += [(f"{stage}:{name}", d) for name, d in datamodule.eval_datasets(stage).items()]
    return named


def plan_images(datasets: Sequence[tuple[str, ImageDataset]]) -> list[PlannedImage]:
    """Every distinct picture of ``datasets``, sorted by key (the same on every process)."""
    first: dict[str, PlannedImage] = {}
    for _, dataset in datasets:
        for index in range(len(dataset)):
            key = dataset.image_key(index)
            if key not in first:
                first[key] = PlannedImage(key, dataset, index)
    return [first[k] for k in sorted(first)]


def shard_of(plan: Sequence[PlannedImage], shard: int, num_shards: int) -> list[PlannedImage]:
    """Plan entries ``shard, shard + num_shards, ...``."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards), got shard {shard} of {num_shards}")
    return list(plan[shard::num_shards])


class _Images(Dataset):
    """``(row, planned image)`` -> ``(row, key, pixel hash, (H, W), [3,S,S] pixels)``."""

    def __init__(self, items: Sequence[tuple[int, PlannedImage]], spec: ImageSpec) -> None:
        self.items, self.spec = list(items), spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, str, str, tuple[int, int], torch.Tensor]:
        row, item = self.items[i]
        image: np.ndarray = item.dataset.load_image(item.index)
        return row, item.key, pixel_hash(image), tuple(image.shape[:2]), self.spec(image)


def _collate(items: list[tuple]) -> tuple[list, list, list, list, torch.Tensor]:
    rows, keys, hashes, sizes, pixels = zip(*items, strict=True)
    return list(rows), list(keys), list(hashes), list(sizes), torch.stack(pixels)


@torch.inference_mode()
def encode(backend: SamBackend, pixels: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    """``[B,3,S,S]`` -> the backend's features, optionally under bf16 autocast."""
    with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
        return backend.encode_image(pixels)


def build_shard(
    backend: SamBackend,
    key: CacheKey,
    plan: Sequence[PlannedImage],
    out: Path,
    dtype: StoreDtype = "bf16",
    shard: int = 0,
    num_shards: int = 1,
    batch_size: int = 8,
    num_workers: int = 0,
    bf16: bool = False,
    progress: bool = True,
) -> tuple[int, int]:
    """Encode the images of one shard that are not in the store yet.

    Args:
        backend: the backend whose image encoder computes ``key``'s features (on its device).
        key: the store key of these features (`evf.cache.keys.cache_key`).
        plan: every planned image (`plan_images`); this call takes its shard of them.
        out: the store directory.
        dtype: storage dtype.
        shard, num_shards: which shard this process writes.
        batch_size: images per encoder call (and per flush to disk).
        num_workers: DataLoader workers loading and preprocessing images.
        bf16: run the image encoder under bf16 autocast (features are rounded to ``dtype`` anyway).
        progress: show a tqdm bar.

    Returns:
        ``(written, already done)`` row counts.
    """
    planned = shard_of(plan, shard, num_shards)
    writer = ShardWriter(out, key, dtype, shard, num_shards, [p.key for p in planned])
    todo = [(row, p) for row, p in enumerate(planned) if p.key not in writer.done]
    name = shard_name(shard, num_shards)
    log.info("%s: %d of %d images done, %d to go", name, len(writer.done), len(planned), len(todo))
    if not todo:
        return 0, len(writer.done)
    device = next(backend.parameters()).device
    loader = DataLoader(
        _Images(todo, backend.info.image), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    backend.eval()
    bar = tqdm(total=len(planned), initial=len(planned) - len(todo), unit="img", disable=not progress,
               desc=name)  # fmt: skip
    with bar:
        for rows, keys, hashes, sizes, pixels in loader:
            features = encode(backend, pixels.to(device), bf16)
            for j, row in enumerate(rows):
                writer.write(row, {k: v[j] for k, v in features.items()}, keys[j], hashes[j], sizes[j])
            writer.flush()
            bar.update(len(rows))
    return len(todo), len(planned) - len(todo)
