"""A tiny SAM checkpoint, a small shapes datamodule and an embedding store built from them."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from evf.cache.builder import build_shard, datamodule_datasets, plan_images
from evf.cache.keys import CacheKey, cache_key
from evf.datamodules import ShapesDataModule
from evf.sam_backends import create_backend

from ..sam_backends.official import save_official

SHAPES = dict(num_train=4, num_val=2, num_test=2, batch_size=2, eval_batch_size=3, num_workers=0)


def shapes_dm(**kwargs) -> ShapesDataModule:
    return ShapesDataModule(**{**SHAPES, **kwargs})


@pytest.fixture
def sam_checkpoint(tmp_path) -> Path:
    torch.manual_seed(1)
    return save_official(create_backend("sam_tiny"), tmp_path / "sam_tiny.pth")


def build_store(
    checkpoint: Path, out: Path, dtype: str = "bf16", key: CacheKey | None = None, **shard
) -> tuple[int, int]:
    """Encode the images of `shapes_dm` into ``out`` (one shard unless ``shard`` says otherwise)."""
    backend = create_backend("sam_tiny", checkpoint=checkpoint)
    plan = plan_images(datamodule_datasets(shapes_dm()))
    key = key or cache_key(backend, "sam_tiny")
    return build_shard(backend, key, plan, out, dtype, progress=False, batch_size=3, **shard)


@pytest.fixture
def store_factory(sam_checkpoint, tmp_path) -> Callable[..., Path]:
    def make(dtype: str = "bf16", name: str = "store", **kwargs) -> Path:
        build_store(sam_checkpoint, tmp_path / name, dtype, **kwargs)
        return tmp_path / name

    return make
