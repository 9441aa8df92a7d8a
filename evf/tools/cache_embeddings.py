"""``evf cache-embeddings``: run the frozen SAM image encoder once over every image a config uses.

    evf cache-embeddings --config configs/evf_sam_h_beit3_l.yaml --config configs/recipes/refcoco.yaml \\
        --model.backend_checkpoint sam_vit_h_4b8939.pth --out /data/cache/sam_h [--dtype bf16]
    # one process per GPU, each writing its own shard (or: torchrun --nproc-per-node 8 -m evf.cli ...)
    for i in 0 1 2 3; do
        CUDA_VISIBLE_DEVICES=$i evf cache-embeddings --config ... --shard $i --num_shards 4 &
    done

The config goes through the real `EVFCLI` parser (the same defaults, links and overrides as
``evf fit``). Only the backend is built, with its checkpoint; no trainer, no multimodal encoder.
The images are those of the datamodule's training set and of all its validation and test splits
(`evf.cache.builder`). A rerun skips finished rows; ``--shard`` / ``--num_shards`` default to
torchrun's ``RANK`` / ``WORLD_SIZE`` or SLURM's ``SLURM_PROCID`` / ``SLURM_NTASKS``. Train from the
store with ``--data.init_args.embedding_cache DIR`` (docs/embedding-cache.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from evf.cache.builder import build_shard, datamodule_datasets, plan_images
from evf.cache.keys import cache_key
from evf.cli import EVFCLI
from evf.datamodules import EVFDataModule
from evf.sam_backends import create_backend


def shard_from_env() -> tuple[int, int]:
    """``(shard, num_shards)`` from torchrun or SLURM variables, else ``(0, 1)``."""
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world])
    return 0, 1


def default_device() -> str:
    """``cuda:<local rank>`` when a GPU is visible, else ``cpu``."""
    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    return f"cuda:{int(local) % torch.cuda.device_count()}"


OPTIONS: list[tuple[str, Any, Any, str]] = [
    ("out", Path | None, None, "Store directory (default: data.init_args.embedding_cache)."),
    ("dtype", Literal["bf16", "fp16", "fp32"], "bf16", "Storage dtype."),
    ("shard", int | None, None, "This process's shard (default: torchrun / SLURM rank, else 0)."),
    ("num_shards", int | None, None, "Number of shards (default: torchrun / SLURM world size, else 1)."),
    ("batch_size", int, 8, "Images per encoder call and per flush to disk."),
    ("num_workers", int | None, None, "Image loading workers (default: data.init_args.num_workers)."),
    ("device", str | None, None, "Where the image encoder runs (default: cuda:<LOCAL_RANK>, else cpu)."),
    ("bf16", bool, False, "Run the image encoder under bf16 autocast (features are rounded to --dtype)."),
    ("progress", bool, True, "Show a progress bar."),
]
"""The tool's own options: (name, type, default, help)."""


class CacheEmbeddingsCLI(EVFCLI):
    """`EVFCLI` that parses a training config, builds its datamodule and backend (nothing else) and
    writes one shard of the embedding store."""

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(args=args, run=False)
        self.build()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        group = parser.add_argument_group("Embedding cache")
        for name, type_, default, help_ in OPTIONS:
            group.add_argument(f"--{name}", type=type_, default=default, help=help_)

    def instantiate_classes(self) -> None:
        """The datamodule only: the backend is built in `build`, the rest of the model never.

        ``instantiate_groups=False``: the model and trainer are class groups, which jsonargparse would
        otherwise build even when popped from the config (then with their defaults: BEIT-3-L + SAM-H).
        """
        config = self.config.clone()
        self.model_config: Namespace = config.pop("model")
        config.pop("trainer")
        self.datamodule: EVFDataModule = self.parser.instantiate(config, instantiate_groups=False)["data"]
        self.model, self.trainer = None, None

    def build(self) -> None:
        cfg, model = self.config, self.model_config
        out = cfg.out or self.datamodule.embedding_cache
        if out is None:
            raise ValueError("where to? give --out DIR (or set data.init_args.embedding_cache)")
        _check_cacheable(model, self.datamodule)
        shard, num_shards = shard_from_env() if cfg.shard is None else (cfg.shard, cfg.num_shards or 1)
        options: dict[str, Any] = dict(model.backend_kwargs or {})
        backend = create_backend(model.backend, checkpoint=model.backend_checkpoint, **options)
        backend = backend.to(cfg.device or default_device())
        plan = plan_images(datamodule_datasets(self.datamodule))
        key = cache_key(backend, model.backend, options)
        workers = self.datamodule.num_workers if cfg.num_workers is None else cfg.num_workers
        start = time.perf_counter()
        written, skipped = build_shard(
            backend,
            key,
            plan,
            Path(out),
            cfg.dtype,
            shard,
            num_shards,
            cfg.batch_size,
            workers,
            cfg.bf16,
            cfg.progress,
        )
        seconds = time.perf_counter() - start  # image loading, encoding and writing (not the model load)
        rate = f" ({written / seconds:.1f} images/s)" if written else ""
        print(
            f"shard {shard} of {num_shards}: {written} images encoded in {seconds:.1f} s{rate}, "
            f"{skipped} were done; store: {out}"
        )


def _check_cacheable(model: Namespace, datamodule: EVFDataModule) -> None:
    """Refuse configs whose training could not use the features."""
    if model.backend_checkpoint is None:
        raise ValueError(
            "model.backend_checkpoint is not set: features of a random-init image encoder cannot be "
            "matched by any training run (set it to the SAM weights you train with)"
        )
    trainable = model.trainable
    if trainable is not None and trainable.get("image_encoder"):
        raise ValueError("trainable.image_encoder is true: an image encoder that trains cannot use a cache")
    datamodule.check_cacheable()
