"""Prediction inputs (images x prompts) and the writer of mask / overlay PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from evf.datamodules.base import BatchBuilder
from evf.datamodules.sample import Sample
from evf.encoders import build_preprocessor
from evf.io import list_images, read_rgb
from evf.sam_backends import backend_image_spec
from evf.visualize import overlay


class PromptedImages(Dataset):
    """Every image (files or folders) with the same list of prompts."""

    def __init__(self, images: Sequence[str | Path], prompts: Sequence[str]) -> None:
        if not prompts:
            raise ValueError("predict needs at least one --prompt")
        self.paths = [p for path in images for p in list_images(path)]
        if not self.paths:
            raise ValueError(f"no images found in {list(map(str, images))}")
        self.prompts = list(prompts)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        path = self.paths[index]
        return Sample(image=read_rgb(path), masks=None, texts=self.prompts, image_id=str(path))


class PredictDataModule(L.LightningDataModule):
    """Batches of prompted images prepared for the given encoder and backend."""

    def __init__(
        self,
        images: Sequence[str | Path],
        prompts: Sequence[str],
        encoder: str,
        backend: str,
        tokenizer: str | Path | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = PromptedImages(images, prompts)
        self.builder = BatchBuilder(build_preprocessor(encoder, tokenizer), backend_image_spec(backend), keep_images=True)
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=self.builder, num_workers=self.num_workers)


class MaskWriter(BasePredictionWriter):
    """Writes ``<stem>_<k>_mask.png`` and ``<stem>_<k>_overlay.png`` per prompt and a
    ``predictions.json`` index (image, prompt, files, predicted IoU, mask area)."""

    def __init__(self, output: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.records: list[dict[str, Any]] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.output.mkdir(parents=True, exist_ok=True)
        for image, image_id, result in zip(batch["images"], batch["image_ids"], prediction, strict=True):
            stem = Path(image_id).stem
            for k, (text, mask, score) in enumerate(zip(result["texts"], result["masks"], result["scores"], strict=True)):
                mask = mask.cpu().numpy()
                mask_file, overlay_file = f"{stem}_{k}_mask.png", f"{stem}_{k}_overlay.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(self.output / mask_file)
                Image.fromarray(overlay(image, mask)).save(self.output / overlay_file)
                self.records.append(
                    {"image": image_id, "prompt": text, "mask": mask_file, "overlay": overlay_file,
                     "score": float(score), "area": int(mask.sum())}
                )  # fmt: skip

    def on_predict_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            (self.output / "predictions.json").write_text(json.dumps(self.records, indent=2))
