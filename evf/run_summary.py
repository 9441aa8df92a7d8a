"""`RunSummary`: what a newcomer wants to see of a fit without opening TensorBoard.

After every validation it prints one line (epoch, step, pooled cIoU / gIoU, elapsed and estimated
remaining time) where no progress bar shows it (output not a terminal, or the bar off), so the log
of a piped run shows progress too; at the end of the fit it prints the wall time, the training
speed and the last validation's cIoU / gIoU per split and per expression kind (the
``val/<split>/<kind>/<metric>`` values `evf.evaluation` logs). ``evf fit`` adds it to every run.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import TextIO

from lightning.pytorch import Callback, LightningModule, Trainer

METRICS = ("ciou", "giou")


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class RunSummary(Callback):
    """Per-validation progress lines and an end-of-fit summary, printed to ``stream`` (stdout)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._start: float | None = None
        self._first_step = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._first_step = time.perf_counter(), trainer.global_step

    def _elapsed(self) -> float:
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._start is None:
            return
        stream = self.stream or sys.stdout
        if trainer.progress_bar_callback is not None and stream.isatty():
            return  # the progress bar shows it
        metrics = trainer.callback_metrics
        steps = trainer.global_step - self._first_step
        total = trainer.estimated_stepping_batches - self._first_step
        remaining = self._elapsed() / steps * (total - steps) if steps else float("nan")
        scores = " ".join(f"{k} {float(metrics[k]):.3f}" for k in ("val/ciou", "val/giou") if k in metrics)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._print(
            f"epoch {trainer.current_epoch + 1}{epochs} step {trainer.global_step}: {scores} | "
            f"elapsed {_duration(self._elapsed())}, remaining ~{_duration(remaining) if steps else '?'}"
        )

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start is None:
            return
        seconds, steps = self._elapsed(), trainer.global_step - self._first_step
        speed = f"{steps / seconds:.2f} steps/s" if seconds else "-"
        self._print(f"\nfit: {steps} steps in {_duration(seconds)} ({speed}, validation included)")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        table: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "split_names") and hasattr(dm, "split_kinds"):
            for split, kinds in zip(dm.split_names("validate"), dm.split_kinds("validate"), strict=True):
                for kind in kinds:
                    for m in METRICS:
                        if f"val/{split}/{kind}/{m}" in metrics:
                            table[split, kind][m] = metrics[f"val/{split}/{kind}/{m}"]
        table["all splits", "all"] = {m: metrics[f"val/{m}"] for m in METRICS if f"val/{m}" in metrics}
        if not any(table.values()):
            return
        self._print(
            "\nlast validation, per expression kind:\n\n| split | kind | cIoU | gIoU |\n|---|---|---|---|"
        )
        for (split, kind), values in sorted(table.items(), key=lambda x: (x[0][0] == "all splits", x[0])):
            cells = [f"{values[m]:.3f}" if m in values else "–" for m in METRICS]
            self._print(f"| {split} | {kind} | {' | '.join(cells)} |")


__all__ = ["RunSummary"]
