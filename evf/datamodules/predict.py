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

A prompt may carry points (with labels: 1 foreground, 0 background) and a box, in original-image
pixels, beside or instead of its text (`Prompt`)::

    {"cat.png": [{"text": "the cat", "box": [10, 20, 200, 180]},
                 {"points": [[50, 60], [90, 40]], "point_labels": [1, 0]}]}

and in a CSV, optional columns ``points`` (``"x y [label]; x y [label]"``) and ``box``
(``"x0 y0 x1 y1"``); the ``prompt`` cell may then be empty.
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


@dataclass
class Prompt:
    """One thing to segment: an expression, points and/or a box (original-image pixels).

    Raises ValueError (at construction) for a prompt with nothing in it, points and labels of
    different counts, labels other than 0/1, or a box that is not ``x0 <= x1, y0 <= y1``.
    """

    text: str | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()  # default: every point foreground
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        text = self.text.strip() if self.text else None
        self.text = text or None
        points = tuple((float(x), float(y)) for x, y in self.points)
        labels = tuple(int(v) for v in self.point_labels) or (1,) * len(points)
        self.points = points
        self.point_labels = labels
        if not (self.text or points or self.box is not None):
            raise ValueError("a prompt needs a text, points or a box")
        if len(labels) != len(points):
            raise ValueError(f"{len(points)} point(s) but {len(labels)} label(s)")
        if set(labels) - {0, 1}:
            raise ValueError(f"point labels must be 1 (foreground) or 0 (background), got {list(labels)}")
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
                raise ValueError(f"a box is x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {list(self.box)}")
            self.box = box

    @property
    def text_only(self) -> bool:
        return self.text is not None and not self.points and self.box is None

    def record(self) -> dict[str, Any]:
        """The prompt's fields for ``predictions.json`` (``prompt`` is the text or null)."""
        out: dict[str, Any] = {"prompt": self.text}
        if self.points:
            out["points"], out["point_labels"] = [list(p) for p in self.points], list(self.point_labels)
        if self.box is not None:
            out["box"] = list(self.box)
        return out


def parse_point(value: str) -> tuple[tuple[float, float], int]:
    """``"x,y"`` or ``"x,y,label"`` (commas or spaces) -> ((x, y), label)."""
    parts = value.replace(",", " ").split()
    if len(parts) not in (2, 3):
        raise ValueError(f"a point is 'x,y' or 'x,y,label', got {value!r}")
    x, y, label = float(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    return (x, y), label


def parse_box(value: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (commas or spaces) -> the four numbers."""
    parts = value.replace(",", " ").split()
    if len(parts) != 4:
        raise ValueError(f"a box is 'x0,y0,x1,y1', got {value!r}")
    return tuple(float(v) for v in parts)  # type: ignore[return-value]


def _prompt_from(entry: Any, where: str) -> Prompt:
    """A manifest prompt: a string or ``{"text", "points", "point_labels", "box"}``."""
    try:
        if isinstance(entry, str):
            return Prompt(text=entry)
        if isinstance(entry, dict):
            unknown = set(entry) - {"text", "points", "point_labels", "box"}
            if unknown:
                raise ValueError(
                    f"unknown key(s) {sorted(unknown)} (expected text, points, point_labels, box)"
                )
            return Prompt(
                text=entry.get("text"),
                points=tuple(tuple(p) for p in entry.get("points") or ()),
                point_labels=tuple(entry.get("point_labels") or ()),
                box=tuple(entry["box"]) if entry.get("box") is not None else None,
            )
        raise ValueError(f"expected a string or an object, got {entry!r}")
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


@dataclass(frozen=True)
class PromptedImage:
    """One image file and the prompts to segment in it."""

    path: Path
    prompts: tuple[Prompt, ...]


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


def _listed(prompts: Any) -> list[Any]:
    return [prompts] if isinstance(prompts, str | dict) else list(prompts)


def _json_entries(data: Any, path: Path) -> list[tuple[str, list[Prompt]]]:
    if isinstance(data, dict):
        return [
            (image, [_prompt_from(p, f"manifest {path}, {image}") for p in _listed(prompts)])
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
        where = f"manifest {path}, entry {n}"
        entries.append((entry["image"], [_prompt_from(p, where) for p in _listed(prompts)]))
    return entries


def _csv_entries(path: Path) -> list[tuple[str, list[Prompt]]]:
    grouped: dict[str, list[Prompt]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "prompt"} <= set(reader.fieldnames):
            raise ValueError(f"manifest {path}: the CSV header must name columns 'image' and 'prompt'")
        for line, row in enumerate(reader, start=2):
            if not any((row.get(key) or "").strip() for key in ("prompt", "points", "box")):
                continue  # a row with nothing to segment (e.g. a blank line's leftovers)
            try:
                points = [parse_point(p) for p in (row.get("points") or "").split(";") if p.strip()]
                box = parse_box(row["box"]) if (row.get("box") or "").strip() else None
                prompt = Prompt(
                    row["prompt"], tuple(p for p, _ in points), tuple(lb for _, lb in points), box
                )
            except ValueError as err:
                raise ValueError(f"manifest {path}, line {line}: {err}") from err
            grouped.setdefault(row["image"], []).append(prompt)
    return list(grouped.items())


def _expand(image: Path, prompts: Sequence[Prompt], source: str | Path) -> list[PromptedImage]:
    """A file -> one entry; a folder -> one entry per image in it (missing files stay, to be reported)."""
    prompts = tuple(prompts)
    if not prompts:
        raise ValueError(f"{source}: no prompts for {image}")
    return [PromptedImage(p, prompts) for p in list_images(image)]


def collect_inputs(
    images: Sequence[str | Path] = (),
    prompts: Sequence[str | Prompt] = (),
    manifest: str | Path | None = None,
    points: Sequence[str] = (),
    box: str | None = None,
) -> list[PromptedImage]:
    """``images`` (files or folders) each with all ``prompts``, then the entries of ``manifest``.

    ``prompts`` are expressions or ready `Prompt` s. ``points`` (``"x,y[,label]"``) and ``box``
    (``"x0,y0,x1,y1"``), in original-image pixels, join every expression; without expressions they
    form one prompt of their own.

    Raises:
        ValueError: nothing to predict, images given without prompts, or a malformed point or box.
    """
    parsed = [parse_point(p) for p in points]
    geometry = {
        "points": tuple(p for p, _ in parsed),
        "point_labels": tuple(lb for _, lb in parsed),
        "box": parse_box(box) if box else None,
    }
    given = [p for p in prompts if isinstance(p, Prompt)]
    texts = [t for t in prompts if isinstance(t, str) and t.strip()]
    if texts:
        given += [Prompt(text, **geometry) for text in texts]
    elif parsed or box:
        given.append(Prompt(**geometry))
    items = [item for image in images for item in _expand(Path(image), given, "--prompt")]
    if manifest is not None:
        items += read_manifest(manifest)
    if not items:
        raise ValueError("nothing to predict: give --image (files or folders) with --prompt, or --manifest")
    return items


class PromptedImages(Dataset):
    """`PromptedImage` entries as (`Sample`, prompts) pairs; an image that cannot be read gives
    ``{"image", "error"}``. The sample's texts are the prompts' texts ("" where a prompt has none)."""

    def __init__(self, items: Sequence[PromptedImage]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Sample, tuple[Prompt, ...]] | dict[str, str]:
        item = self.items[index]
        try:
            image = read_rgb(item.path)
        except ImageReadError as err:
            return {"image": str(item.path), "error": str(err)}
        texts = [p.text or "" for p in item.prompts]
        return Sample(image=image, masks=None, texts=texts, image_id=str(item.path)), item.prompts


class PredictBatches:
    """Collate: the batch contract (with the original images) for the images that loaded, plus
    ``prompts`` (per image, its `Prompt` s) and ``failures``: the ``{"image", "error"}`` records of
    those that did not. A batch whose every image failed has empty ``image_ids``."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder

    def __call__(self, items: Sequence[tuple[Sample, tuple[Prompt, ...]] | dict[str, str]]) -> Batch:
        loaded = [item for item in items if isinstance(item, tuple)]
        samples = [sample for sample, _ in loaded]
        batch = self.builder(samples) if samples else {"image_ids": [], "images": [], "texts": []}
        batch["prompts"] = [prompts for _, prompts in loaded]
        batch["failures"] = [f for f in items if not isinstance(f, tuple)]
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
    "Prompt",
    "PredictDataModule",
    "PromptedImage",
    "PromptedImages",
    "collect_inputs",
    "parse_box",
    "parse_point",
    "predict_loader",
    "read_manifest",
]
