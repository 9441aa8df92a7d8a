"""Images whose referents are listed one by one: the base of `referring_jsonl` and `mask_folder`.

A referent is one target of an image with its expressions and its mask, given as a COCO RLE dict,
COCO polygons, a mask image (non-zero = target) or nothing (a no-target expression: an all-False
mask, tagged ``no_target`` in `Sample.kinds`). One item per image. Training: up to
``max_expressions`` distinct referents, one expression each, drawn per ``(seed, epoch, index)``.
Evaluation: every expression of every referent.

Splits: records may name their split (a JSON field, a CSV column). A file where no record does is
one split, whatever the spec calls it; a file where some do and some do not is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from evf.datamodules.coco import decode_segmentation
from evf.datamodules.common import NO_TARGET_KIND, DataError, FileDataset, OnBadSample, draw, read_image
from evf.datamodules.sample import Sample
from evf.io import read_mask, read_rgb

"""`Sample.kinds` tag of an expression whose mask is empty on purpose (nothing in the image matches)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Referent:
    """One target of an image.

    Attributes:
        expressions: what refers to it.
        mask: a COCO RLE dict, COCO polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists), the
            `Path` of a mask image, or None for a no-target expression.
        where: ``<file>:<line>`` of its record, for messages.
    """

    expressions: tuple[str, ...]
    mask: dict | list | Path | None
    where: str


def check_expressions(value: Any, where: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings, stripped; else a `DataError` naming ``where``."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'expressions' must be a non-empty list of strings")
    texts = []
    for text in value:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: expression {text!r} is not a non-empty string")
        texts.append(text.strip())
    return tuple(texts)


def select_split(
    records: Iterable[tuple[str | None, str, T]], split: str, path: Path, bad: Callable[[str], None]
) -> list[T]:
    """The records ``(split or None, where, record)`` of ``split`` (see the module docstring); a record
    without a split in a file whose other records have one is reported through ``bad``.

    Raises:
        DataError: the file names splits but none is ``split``.
    """
    records = list(records)
    if all(s is None for s, _, _ in records):
        return [r for _, _, r in records]
    selected = []
    for record_split, where, record in records:
        if record_split is None:
            bad(f"{where}: no 'split', while other records of the file name theirs")
        elif record_split == split:
            selected.append(record)
    if not selected:
        present = sorted({s for s, _, _ in records if s is not None})
        raise DataError(f"{path}: no record in split {split!r}; the file has splits {present}")
    return selected


class ReferentDataset(FileDataset):
    """Images with their referents (see the module docstring).

    Args:
        name: dataset and split, for messages and image ids.
        images: ``(image file, referents)`` per item.
        folder: the folder image ids are relative to.
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    kind_names = (NO_TARGET_KIND,)

    def __init__(
        self,
        name: str,
        images: list[tuple[Path, list[Referent]]],
        folder: Path,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(name, seed, max_expressions, augment, on_bad_sample)
        self.items = images
        self.folder = folder

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        image_path, referents = self.items[index]
        if rng is None:
            chosen = [(i, text) for i, r in enumerate(referents) for text in r.expressions]
        else:
            picks = draw(rng, len(referents), self.max_expressions)
            chosen = [
                (i, referents[i].expressions[int(rng.integers(len(referents[i].expressions)))]) for i in picks
            ]
        used = sorted({i for i, _ in chosen})
        images = {i: read_mask(referents[i].mask) for i in used if isinstance(referents[i].mask, Path)}
        image = self._read_image(image_path, referents, images)
        height, width = image.shape[:2]
        masks = {i: self._mask(referents[i], images.get(i), height, width) for i in used}
        kinds = [NO_TARGET_KIND if referents[i].mask is None else "" for i, _ in chosen]
        return Sample(
            image=image,
            masks=np.stack([masks[i] for i, _ in chosen]),
            texts=[text for _, text in chosen],
            image_id=f"{self.name}/{image_path.relative_to(self.folder).as_posix()}",
            kinds=kinds if any(kinds) else [],
        )

    def _read_image(
        self, path: Path, referents: list[Referent], mask_images: dict[int, np.ndarray]
    ) -> np.ndarray:
        """The image, in the orientation its first sized mask (image or RLE) was drawn on."""
        for i, mask in mask_images.items():
            return read_image(path, mask.shape, f"mask {referents[i].mask} ({referents[i].where})")
        for referent in referents:
            if isinstance(referent.mask, dict) and isinstance(referent.mask.get("size"), list):
                size = referent.mask["size"]
                if len(size) == 2 and all(isinstance(v, int) for v in size):
                    return read_image(path, (size[0], size[1]), f"the RLE of {referent.where}")
        return read_rgb(path)

    def _mask(self, referent: Referent, mask_image: np.ndarray | None, height: int, width: int) -> np.ndarray:
        if referent.mask is None:
            return np.zeros((height, width), dtype=bool)
        if mask_image is not None:
            if mask_image.shape != (height, width):
                raise DataError(
                    f"{referent.where}: mask {referent.mask} is {mask_image.shape[0]}x{mask_image.shape[1]} "
                    f"but the image is {height}x{width} (height x width)"
                )
            mask = mask_image
        else:
            mask = decode_segmentation(referent.mask, height, width, referent.where)
        if not mask.any():
            raise DataError(f"{referent.where}: the mask is empty (mark a no-target expression as such)")
        return mask
