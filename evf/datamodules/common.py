"""What the on-disk datasets share: seeded draws, the bad-sample policy, checked image reading.

Every dataset read from disk derives from `FileDataset`. Its ``sample(index, epoch)`` is a pure
function of ``(seed, epoch, index)``: in training (``max_expressions`` set) the expressions of an
item are drawn by a generator seeded from those three numbers (and a per-class stream, so two
datasets of a mixture do not draw alike); in evaluation (``max_expressions=None``) an item holds
every expression. Optional augmentation is seeded the same way.

Wrong data raises `DataError` (or `evf.io.ImageReadError` for image files), whose message names
the file and the field or id. With ``on_bad_sample="skip"`` the skip is logged with a running count
and kept in ``bad_records``; in training such an item is replaced by the next valid index
(deterministically, no recursion), in evaluation it becomes a `SkippedItem` that the evaluation
loader leaves out and counts, so every readable expression is evaluated exactly once.
"""

from __future__ import annotations

import logging
import zlib
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evf.datamodules.augment import Augmenter
from evf.datamodules.base import EVFDataset
from evf.datamodules.sample import Sample, SkippedItem
from evf.io import ImageReadError, read_rgb

log = logging.getLogger(__name__)

OnBadSample = Literal["error", "skip"]
SEMANTIC_PREFIX = "[semantic]"
_AUGMENT_STREAM = 0xA06


class DataError(ValueError):
    """A dataset file or record is wrong; the message names the file and the field or id."""


def item_rng(*keys: int) -> np.random.Generator:
    """A generator that depends only on ``keys`` (seed, stream, epoch, index, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def draw(rng: np.random.Generator, count: int, most: int) -> list[int]:
    """Up to ``most`` distinct indices of ``range(count)``, in drawn order."""
    return [int(i) for i in rng.choice(count, size=min(most, count), replace=False)]


def semantic_prompt(name: str) -> str:
    """``"[semantic] <name>"``: the prompt of a class-level (not instance-level) mask."""
    return f"{SEMANTIC_PREFIX} {name}"


def require(record: Mapping[str, Any], key: str, where: str) -> Any:
    """``record[key]``, or a `DataError` naming ``where`` and the missing field."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise DataError(f"{where}: missing field {key!r}") from None


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a `DataError` saying which folder the layout expects."""
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} (see docs/datasets.md for the expected layout)")
    return path


def read_image(path: Path, size: tuple[int, int], where: str) -> np.ndarray:
    """Reads ``path`` as RGB and checks it against the annotated ``(height, width)``.

    The EXIF orientation is applied first (as viewers and ``cv2.imread`` do). If that gives the
    wrong size but the stored pixels have the annotated size, the annotations were drawn on the
    stored pixels: those are returned and a warning names the file.

    Raises:
        ImageReadError: the file is missing, truncated or not an image.
        DataError: neither orientation matches ``size``.
    """
    image = read_rgb(path)
    if image.shape[:2] == tuple(size):
        return image
    stored = read_rgb(path, exif_transpose=False)
    if stored.shape[:2] == tuple(size):
        log.warning("%s: EXIF orientation ignored, %s is annotated on the stored pixels", path, where)
        return stored
    raise DataError(
        f"image {path} is {image.shape[0]}x{image.shape[1]} (height x width) but {where} says "
        f"{size[0]}x{size[1]}"
    )


NO_TARGET_KIND = "no_target"


def check_targets(sample: Sample, where: str) -> None:
    """A `DataError` if an expression has an empty mask without being tagged ``no_target``: a dataset
    of single (or multi) targets never yields an empty target; one that may (gRefCOCO, the user
    formats' no-target records) says so per expression."""
    if sample.masks is None:
        return
    kinds = sample.kinds or [""] * len(sample.texts)
    for text, kind, mask in zip(sample.texts, kinds, sample.masks, strict=True):
        if kind != NO_TARGET_KIND and not mask.any():
            raise DataError(
                f"{where} ({sample.image_id}): expression {text!r} has an empty mask but is not a "
                f"no-target expression (kind {kind or 'untagged'!r}); this dataset claims a target for it"
            )


class FileDataset(EVFDataset):
    """Base of the datasets read from disk (see the module docstring).

    Subclasses build their index in ``__init__`` (reporting wrong records through `_bad`) and
    implement ``__len__`` and `load`.

    Args:
        name: dataset and split, for messages (e.g. ``refcoco(unc)/val``).
        seed: seed of every random draw.
        max_expressions: expressions drawn per training item; None = every expression (evaluation).
        augment: random horizontal flip (swapping "left"/"right" in the texts) and brightness/contrast.
        on_bad_sample: ``error`` raises on wrong data; ``skip`` logs it, counts it and moves on.
    """

    def __init__(
        self,
        name: str,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        if max_expressions is not None and max_expressions < 1:
            raise ValueError(f"max_expressions must be None or at least 1, got {max_expressions}")
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.name = name
        self.seed = seed
        self.max_expressions = max_expressions
        self.on_bad_sample = on_bad_sample
        self.augmenter = Augmenter() if augment else None
        self.skipped = 0
        self.index_skipped = 0  # of which while the index was built (never reaches a batch)
        self.bad_records: list[str] = []  # what was skipped and why, in the order met
        self._stream = zlib.crc32(type(self).__name__.encode())

    @abstractmethod
    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        """Item ``index``: with ``rng`` its training draw, without it every expression."""

    @property
    def evaluating(self) -> bool:
        """Evaluation reads every expression (``max_expressions=None``) and never substitutes items."""
        return self.max_expressions is None

    def sample(self, index: int, epoch: int) -> Sample | SkippedItem:
        """Item ``index``; a bad one raises (``error``), or in ``skip`` mode is replaced by the next
        valid item (training) or returned as a `SkippedItem` (evaluation)."""
        if self.evaluating and self.on_bad_sample == "skip":
            self._check_index(index)
            try:
                return self._sample(index, epoch)
            except (DataError, ImageReadError) as err:
                self._skip(f"item {index}", err)
                return SkippedItem(f"{self.name}#{index}", str(err))
        return self._readable(index, epoch)

    def image_key(self, index: int) -> str:
        return self._readable(index, 0).image_id

    def load_image(self, index: int) -> np.ndarray:
        return self._readable(index, 0).image

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} items")

    def _readable(self, index: int, epoch: int) -> Sample:
        """Item ``index``, or (``skip``) the next valid one."""
        self._check_index(index)
        size = len(self)
        for offset in range(size):
            current = (index + offset) % size
            try:
                return self._sample(current, epoch)
            except (DataError, ImageReadError) as err:
                if self.on_bad_sample == "error":
                    raise
                self._skip(f"item {current}", err)
        raise DataError(f"{self.name}: all {size} items are bad ({self.skipped} skipped)")

    def _sample(self, index: int, epoch: int) -> Sample:
        rng = None if self.max_expressions is None else item_rng(self.seed, self._stream, epoch, index)
        sample = self.load(index, rng)
        check_targets(sample, f"{self.name} item {index}")
        if self.augmenter is not None:
            sample = self.augmenter(sample, item_rng(self.seed, self._stream, _AUGMENT_STREAM, epoch, index))
        return sample

    def _bad(self, message: str) -> None:
        """A wrong record met while indexing: raises `DataError`, or (skip) logs and counts it."""
        if self.on_bad_sample == "error":
            raise DataError(message)
        self.index_skipped += 1
        self._skip("record", DataError(message))

    def _skip(self, what: str, err: Exception) -> None:
        self.skipped += 1
        self.bad_records.append(f"{what}: {err}")
        log.warning(
            "%s: skipped bad %s (%s); %d skipped so far in this process", self.name, what, err, self.skipped
        )
