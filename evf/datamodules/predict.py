"""The Lightning pieces of ``evf predict``: `PredictDataModule` (batches of prompted images, from
`evf.inputs`) and `MaskWriter` (`evf.prediction.PredictionWriter` as a prediction callback)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from evf.batch import BatchBuilder
from evf.encoders import build_preprocessor
from evf.inputs import PromptedImage, predict_loader
from evf.prediction import PredictionWriter
from evf.sam_backends import backend_image_spec


class PredictDataModule(L.LightningDataModule):
    """Batches of prompted images prepared for the given encoder and backend (``evf predict``).

    Args:
        items: images and their prompts (`collect_inputs`).
        encoder, backend, tokenizer: registered names and tokenizer path, as the model's.
        batch_size: images per batch (each image's expressions decode together; its image
            encoder pass runs once).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        items: Sequence[PromptedImage],
        encoder: str,
        backend: str,
        tokenizer: str | Path | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.items = list(items)
        self.builder = BatchBuilder(build_preprocessor(encoder, tokenizer), backend_image_spec(backend))
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.items, self.builder, self.batch_size, self.num_workers)


class MaskWriter(BasePredictionWriter):
    """`PredictionWriter` as a Lightning callback for ``evf predict`` (writes after every batch)."""

    def __init__(self, output: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.writer = PredictionWriter(Path(output))

    def on_predict_start(self, trainer, pl_module) -> None:
        self.writer.start()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        for failure in batch.failures:
            self.writer.fail(failure)
        self.writer.add_batch(batch, prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.writer.finish()


__all__ = ["MaskWriter", "PredictDataModule"]
