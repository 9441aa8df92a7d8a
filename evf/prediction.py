"""Prediction outputs, and prediction over many images from Python.

For every (image, prompt) the writer saves ``<stem>_<k>_mask.png`` (0/255) and
``<stem>_<k>_overlay.png``, and records in ``predictions.json``: image, prompt (the text, or null),
its ``points`` / ``point_labels`` / ``box`` when it has them, file names, predicted IoU
(``score``), mask area and the mask as COCO RLE (``rle``: ``size`` [h, w] and ``counts`` as a
string, `pycocotools.mask.decode` reads it back); ``presence`` (the probability that the target is
in the image: 1.0 for a model without a presence head) and ``present`` (false: "it isn't there",
and the mask is empty); ``instances``: the mask's connected regions (8-connected), each as
``{"rle", "area"}``, largest first (a multi-target expression such as "all the cars" gets one per
object that does not touch another). Images that could not be read are listed in ``failures.json``
(image, error). Stems that repeat (``a.jpg`` and ``a.png``) get ``_1``, ``_2``, ...

    report = evf.predict_images(model, "photos/", ["the dog"], output="out")   # or manifest="m.csv"
    report.failures  # [] when every image was read
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from evf.batch import Batch, BatchBuilder
from evf.decode import Prediction, decode
from evf.inputs import collect_inputs, predict_loader
from evf.model import EVFSAM
from evf.predictor import autocast_to
from evf.prompts import Prompt
from evf.visualize import overlay

log = logging.getLogger(__name__)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Bool ``[H,W]`` -> COCO RLE with ``counts`` as a str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def instances(mask: np.ndarray) -> list[dict[str, Any]]:
    """The 8-connected regions of a bool ``[H,W]`` mask as ``{"rle", "area"}``, largest first."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    regions = [labels == k for k in range(1, count + 1)]
    regions.sort(key=lambda region: -int(region.sum()))
    return [{"rle": encode_rle(region), "area": int(region.sum())} for region in regions]


@dataclass
class PredictionWriter:
    """Collects the records of a run and writes its files (no Lightning; ``evf predict`` wraps it in
    `evf.datamodules.predict.MaskWriter`).

    Attributes:
        output: folder for the PNGs and JSON files; None keeps the records in memory only.
        records: one per (image, prompt).
        failures: one per image that could not be read: ``{"image", "error"}``.
    """

    output: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    _stems: dict[str, str] = field(default_factory=dict)

    def add(self, image: np.ndarray, image_id: str, prompts: Sequence[Prompt], prediction: Prediction):
        """Record (and write) the masks of one image's prompts."""
        stem = self._stem(image_id)
        p = prediction
        rows = zip(prompts, p.masks, p.scores, p.presence, p.present, strict=True)
        for k, (prompt, mask, score, presence, present) in enumerate(rows):
            mask = mask.cpu().numpy()
            record = {
                "image": image_id,
                **prompt.record(),
                "score": float(score),
                "presence": float(presence),
                "present": bool(present),
                "area": int(mask.sum()),
            }
            if self.output is not None:
                record["mask"], record["overlay"] = f"{stem}_{k}_mask.png", f"{stem}_{k}_overlay.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(self.output / record["mask"])
                Image.fromarray(overlay(image, mask)).save(self.output / record["overlay"])
            self.records.append({**record, "rle": encode_rle(mask), "instances": instances(mask)})

    def add_batch(self, batch: Batch, predictions: Sequence[Prediction]) -> None:
        """Record every image of a prediction batch (`evf.inputs.PredictBatches`: it keeps the
        original images, on which the overlays are drawn, and each image's prompts)."""
        if batch.images is None or batch.prompts is None:
            raise ValueError("a prediction batch keeps its images and prompts (evf.inputs.PredictBatches)")
        for image, image_id, prompts, result in zip(
            batch.images, batch.image_ids, batch.prompts, predictions, strict=True
        ):
            self.add(image, image_id, prompts, result)

    def fail(self, failure: dict[str, str]) -> None:
        log.warning("skipped %s: %s", failure["image"], failure["error"])
        self.failures.append(failure)

    def _stem(self, image_id: str) -> str:
        if image_id not in self._stems:
            stem, taken, n = Path(image_id).stem, set(self._stems.values()), 0
            while (candidate := stem if n == 0 else f"{stem}_{n}") in taken:
                n += 1
            self._stems[image_id] = candidate
        return self._stems[image_id]

    def start(self) -> None:
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)

    def finish(self) -> None:
        """Write ``predictions.json`` (and ``failures.json`` when images failed)."""
        if self.output is None:
            return
        (self.output / "predictions.json").write_text(json.dumps(self.records, indent=2))
        if self.failures:
            (self.output / "failures.json").write_text(json.dumps(self.failures, indent=2))

    def summary(self) -> str:
        """One line per failure after a count, or '' when none failed."""
        if not self.failures:
            return ""
        lines = [f"{len(self.failures)} image(s) could not be read:"]
        return "\n".join(lines + [f"  {f['image']}: {f['error']}" for f in self.failures])


@dataclass
class PredictionReport:
    """What `predict_images` did: the records (with RLE masks) and the images it could not read."""

    records: list[dict[str, Any]]
    failures: list[dict[str, str]]


@torch.no_grad()
def predict_images(
    model: EVFSAM,
    images: str | Path | Sequence[str | Path] = (),
    prompts: str | Prompt | Sequence[str | Prompt] = (),
    manifest: str | Path | None = None,
    output: str | Path | None = None,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    threshold: float = 0.0,
    progress: bool = True,
    presence_threshold: float = 0.5,
) -> PredictionReport:
    """Segment every prompt in every image with ``model`` (its own preprocessing, e.g. that of
    `evf.load_pretrained`); the image encoder runs once per image.

    Args:
        model: the model (its device is used).
        images: an image file, a folder, or a list of them; each gets all ``prompts``.
        prompts: one expression or several.
        manifest: a JSON / CSV file mapping images to their own prompts (`read_manifest`).
        output: folder for mask / overlay PNGs and ``predictions.json``; None writes nothing.
        batch_size: images per forward pass.
        dtype: compute dtype under autocast (see `evf.Predictor`).
        threshold: logit threshold of the masks.
        progress: show a progress bar.
        presence_threshold: with a presence head, prompts whose target is less likely than this
            to be in the image get an empty mask (``"present": false``).

    Returns:
        The records and the failures (a missing or unreadable image is reported, not raised).
    """
    images = [images] if isinstance(images, str | Path) else list(images)
    prompts = [prompts] if isinstance(prompts, str | Prompt) else list(prompts)
    items = collect_inputs(images, prompts, manifest)
    builder = BatchBuilder(model.encoder.preprocessor, model.backend.info.image)
    writer = PredictionWriter(None if output is None else Path(output))
    writer.start()
    batches = predict_loader(items, builder, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="predict", unit="batch")
    model.eval()
    device = next(model.parameters()).device
    for batch in batches:
        for failure in batch.failures:
            writer.fail(failure)
        with autocast_to(device, dtype):
            results = decode(model, batch.to(device), threshold, presence_threshold=presence_threshold)
        writer.add_batch(batch, results)
    writer.finish()
    return PredictionReport(writer.records, writer.failures)


__all__ = [
    "PredictionReport",
    "PredictionWriter",
    "encode_rle",
    "instances",
    "predict_images",
]
