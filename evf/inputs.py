"""Prediction inputs: images (files, folders, a JSON / CSV manifest) with their prompts, and their
batches (`predict_loader`). No Lightning here: `evf.predict_images` runs without it; ``evf predict``
wraps the same loader in `evf.datamodules.predict.PredictDataModule`.

An image that is missing or unreadable does not stop a run: `PromptedImages` returns a failure
record for it (``{"image", "error"}``), the collate function (`PredictBatches`) puts those under
``batch.failures`` beside the images that did load, and the writer (`evf.prediction`) reports
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

import numpy as np
from torch.utils.data import DataLoader, Dataset

from evf.batch import Batch, BatchBuilder
from evf.io import ImageReadError, list_images, read_rgb
from evf.prompts import Prompt


def parse_point(value: str) -> tuple[tuple[float, float], int]:
    """``"x,y"`` or ``"x,y,label"`` (commas or spaces) -> ((x, y), label)."""
    parts = value.replace(",", " ").split()
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        x, y, label = float(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise ValueError(f"a point is 'x,y' or 'x,y,label' (numbers), got {value!r}") from None
    return (x, y), label


def parse_box(value: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (commas or spaces) -> the four numbers."""
    parts = value.replace(",", " ").split()
    try:
        if len(parts) != 4:
            raise ValueError
        return tuple(float(v) for v in parts)  # type: ignore[return-value]
    except ValueError:
        raise ValueError(f"a box is 'x0,y0,x1,y1' (numbers), got {value!r}") from None


def prompts_with_geometry(
    prompts: Sequence[str | Prompt], points: Sequence[str] = (), box: str | None = None
) -> list[Prompt]:
    """``prompts`` (expressions or ready `Prompt` s) with ``points`` (``"x,y[,label]"``) and ``box``
    (``"x0,y0,x1,y1"``) joined to every expression; without expressions the points and box form one
    prompt of their own. Blank expressions are dropped. (``evf predict``'s and ``evf demo``'s rule.)

    Raises:
        ValueError: a malformed point or box.
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
    return given


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
    given = prompts_with_geometry(prompts, points, box)
    items = [item for image in images for item in _expand(Path(image), given, "--prompt")]
    if manifest is not None:
        items += read_manifest(manifest)
    if not items:
        raise ValueError("nothing to predict: give --image (files or folders) with --prompt, or --manifest")
    return items


@dataclass(frozen=True)
class LoadedImage:
    """A `PromptedImage` whose file was read: its uint8 ``[H,W,3]`` pixels."""

    image_id: str
    image: np.ndarray
    prompts: tuple[Prompt, ...]


class PromptedImages(Dataset):
    """`PromptedImage` entries, read: a `LoadedImage`, or ``{"image", "error"}`` for an image that
    cannot be read."""

    def __init__(self, items: Sequence[PromptedImage]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedImage | dict[str, str]:
        item = self.items[index]
        try:
            image = read_rgb(item.path)
        except ImageReadError as err:
            return {"image": str(item.path), "error": str(err)}
        return LoadedImage(str(item.path), image, item.prompts)


class PredictBatches:
    """Collate: a `Batch` (with the original images and each image's `Prompt` s) of the images that
    loaded, whose ``failures`` lists the ``{"image", "error"}`` records of those that did not. A
    batch whose every image failed has no images."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder

    def __call__(self, items: Sequence[LoadedImage | dict[str, str]]) -> Batch:
        loaded = [item for item in items if isinstance(item, LoadedImage)]
        ids = [item.image_id for item in loaded]
        images = self.builder.images([item.image for item in loaded], ids)
        batch = self.builder.prompt_batch(images, [item.prompts for item in loaded], ids)
        batch.images = [item.image for item in loaded]
        batch.failures = [f for f in items if not isinstance(f, LoadedImage)]
        return batch


def predict_loader(
    items: Sequence[PromptedImage], builder: BatchBuilder, batch_size: int = 1, num_workers: int = 0
) -> DataLoader:
    """Batches of ``items`` in order."""
    return DataLoader(
        PromptedImages(items),
        batch_size=batch_size,
        collate_fn=PredictBatches(builder),
        num_workers=num_workers,
    )


__all__ = [
    "LoadedImage",
    "PredictBatches",
    "PromptedImage",
    "PromptedImages",
    "collect_inputs",
    "parse_box",
    "parse_point",
    "predict_loader",
    "prompts_with_geometry",
    "read_manifest",
]
