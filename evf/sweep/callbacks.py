"""Callbacks the sweep runner adds to every run (``--trainer.callbacks+=...``).

* `FailOnNonFiniteLoss`: a NaN/inf training loss raises, so the run exits non-zero and is marked
  failed instead of training on garbage.
* `RecordResults`: writes what the sweep table needs into ``<run_dir>/results.json``: parameter
  counts (at fit start), the best/last checkpoint paths (at fit end: their presence marks a
  completed fit) and the metrics of each evaluation (``fit`` = the last validation during fit,
  ``validate``, ``test``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class FailOnNonFiniteLoss(Callback):
    """Raise `FloatingPointError` as soon as a training step returns a non-finite loss."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {trainer.global_step}")


class RecordResults(Callback):
    """Merge parameter counts, checkpoint paths and metrics into a JSON file (global rank 0 only).

    Args:
        path: the JSON file, usually ``<run_dir>/results.json``.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def _update(self, trainer: L.Trainer, key: str, value: Any) -> None:
        if not trainer.is_global_zero:
            return
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from evf.model import trainable_summary

        parts = trainable_summary(pl_module.model)
        total = sum(p["trainable"] + p["frozen"] for p in parts.values())
        trainable = sum(p["trainable"] for p in parts.values())
        self._update(trainer, "params", {"total": total, "trainable": trainable, "parts": parts})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") or None
        last = getattr(callback, "last_model_path", "") or None
        self._update(trainer, "fit", {"best": best, "last": last, "global_step": trainer.global_step})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stage = "fit" if trainer.state.fn == "fit" else "validate"
        self._record_metrics(trainer, stage, "val/")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_metrics(trainer, "test", "test/")

    def _record_metrics(self, trainer: L.Trainer, stage: str, prefix: str) -> None:
        """The pooled and per-split metrics (not the per-kind ones, which stay in TensorBoard: a split
        name may itself hold "/", so only the datamodule's split names tell them apart)."""
        split_names = getattr(trainer.datamodule, "split_names", None)
        evaluation = "test" if prefix == "test/" else "validate"
        splits = None if split_names is None else set(split_names(evaluation))

        def per_split(key: str) -> bool:
            rest = key[len(prefix) :]
            return "/" not in rest or splits is None or rest.rsplit("/", 1)[0] in splits

        values = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix) and per_split(k)
        }
        record = {"step": trainer.global_step, "ckpt_path": trainer.ckpt_path, "values": values}
        self._update(trainer, f"metrics_{stage}", record)
