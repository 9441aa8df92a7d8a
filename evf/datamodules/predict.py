"""Prediction inputs: images (files, folders, a JSON / CSV manifest) with their prompts.

An image that is missing or unreadable does not stop a run: `PromptedImages` returns a failure
record for it (``{"image", "error"}``), the collate function (`PredictBatches`) puts those under
``batch["failures"]`` beside the images that did load, and the writer (`evf.prediction`) reports
them; ``evf predict`` exits non-zero at the end when any failed.

Manifests map images to their prompts::

    {"street.jpg": ["the red car", "the man on the left"], "photos/": ["the dog"]}
    [{"image": "street.jpg", "prompts": ["the red car"]}, {"image": "cat.png", "prompt": "the cat"}]

or, as CSV with a header, one ``image,prompt`` row per prompt (rows of one image may be apart).
Relative paths are relative to the manifest's folder; a folder entry gives every image in it the
same prompts.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from evf.datamodules.base import Batch, BatchBuilder
from evf.datamodules.sample import Sample
from evf.encoders import build_preprocessor
from evf.io import ImageReadError, list_images, read_rgb
from evf.sam_backends import backend_image_spec


@dataclass(frozen=True)
class PromptedImage:
    """One image file and the expressions to segment in it."""

    path: Path
    prompts: tuple[str, ...]


def read_manifest(path: str | Path) -> list[PromptedImage]:
    """Parse a JSON or CSV manifest (see the module docstring) into `PromptedImage` entries.

    Raises:
        ValueError: an unknown suffix, a malformed entry or an image without prompts (named).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        entries = _json_entries(json.loads(path.read_text()), path)
    elif path.suffix.lower() == ".csv":
        entries = _csv_entries(path)
    else:
        raise ValueError(f"manifest {path}: expected a .json or .csv file")
    root = path.parent
    return [item for image, prompts in entries for item in _expand(root / image, prompts, path)]


def _json_entries(data: Any, path: Path) -> list[tuple[str, list[str]]]:
    if isinstance(data, dict):
        return [
            (image, [prompts] if isinstance(prompts, str) else list(prompts))
            for image, prompts in data.items()
        ]
    if not isinstance(data, list):
        raise ValueError(f"manifest {path}: expected an object or a list of entries")
    entries = []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or "image" not in entry or not ({"prompts", "prompt"} & set(entry)):
            raise ValueError(
                f"manifest {path}: entry {n} needs 'image' and 'prompts' (or 'prompt'): {entry!r}"
            )
        prompts = entry.get("prompts", entry.get("prompt"))
        entries.append((entry["image"], [prompts] if isinstance(prompts, str) else list(prompts)))
    return entries


def _csv_entries(path: Path) -> list[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "prompt"} <= set(reader.fieldnames):
            raise ValueError(f"manifest {path}: the CSV header must name columns 'image' and 'prompt'")
        for row in reader:
            grouped.setdefault(row["image"], []).append(row["prompt"])
    return list(grouped.items())


def _expand(image: Path, prompts: Sequence[str], source: str | Path) -> list[PromptedImage]:
    """A file -> one entry; a folder -> one entry per image in it (missing files stay, to be reported)."""
    prompts = tuple(p for p in prompts if p and p.strip())
    if not prompts:
        raise ValueError(f"{source}: no prompts for {image}")
    return [PromptedImage(p, prompts) for p in list_images(image)]


def collect_inputs(
    images: Sequence[str | Path] = (), prompts: Sequence[str] = (), manifest: str | Path | None = None
) -> list[PromptedImage]:
    """``images`` (files or folders) each with all ``prompts``, then the entries of ``manifest``.

    Raises:
        ValueError: nothing to predict, or images given without prompts.
    """
    items = [item for image in images for item in _expand(Path(image), prompts, "--prompt")]
    if manifest is not None:
        items += read_manifest(manifest)
    if not items:
        raise ValueError("nothing to predict: give --image (files or folders) with --prompt, or --manifest")
    return items


class PromptedImages(Dataset):
    """`PromptedImage` entries as `Sample` s; an image that cannot be read gives ``{"image", "error"}``."""

    def __init__(self, items: Sequence[PromptedImage]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample | dict[str, str]:
        item = self.items[index]
        try:
            image = read_rgb(item.path)
        except ImageReadError as err:
            return {"image": str(item.path), "error": str(err)}
        return Sample(image=image, masks=None, texts=list(item.prompts), image_id=str(item.path))


class PredictBatches:
    """Collate: the batch contract (with the original images) for the images that loaded, plus
    ``failures``: the ``{"image", "error"}`` records of those that did not. A batch whose every image
    failed has empty ``image_ids``."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder

    def __call__(self, items: Sequence[Sample | dict[str, str]]) -> Batch:
        samples = [s for s in items if isinstance(s, Sample)]
        batch = self.builder(samples) if samples else {"image_ids": [], "images": [], "texts": []}
        batch["failures"] = [f for f in items if not isinstance(f, Sample)]
        return batch


def predict_loader(
    items: Sequence[PromptedImage], builder: BatchBuilder, batch_size: int = 1, num_workers: int = 0
) -> DataLoader:
    """Batches of ``items`` in order (``builder`` must keep the original images)."""
    return DataLoader(
        PromptedImages(items),
        batch_size=batch_size,
        collate_fn=PredictBatches(builder),
        num_workers=num_workers,
    )


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
        self.builder = BatchBuilder(
            build_preprocessor(encoder, tokenizer), backend_image_spec(backend), keep_images=True
        )
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return predict_loader(self.items, self.builder, self.batch_size, self.num_workers)


__all__ = [
    "PredictBatches",
    "PredictDataModule",
    "PromptedImage",
    "PromptedImages",
    "collect_inputs",
    "predict_loader",
    "read_manifest",
]
