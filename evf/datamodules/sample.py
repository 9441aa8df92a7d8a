"""The record every dataset returns: one image with its expressions and their masks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One image and ``n`` referring expressions.

    Attributes:
        image: uint8 ``[H,W,3]`` RGB.
        masks: bool ``[n,H,W]``, one ground-truth mask per expression (may be all False for
            no-target expressions); None when there is no ground truth (prediction).
        texts: ``n`` expressions.
        image_id: stable identifier, used in logs and error messages.
        kinds: optional tag per expression (e.g. ``colour``/``shape``/``position``/``size`` for the
            synthetic data) for per-type metrics; empty when the dataset has none.
        void: optional bool ``[H,W]``: pixels no expression of the image is judged on (LabelMe's
            ``__ignore__`` regions, as VOC's 255): left out of the loss and the metrics.
    """

    image: np.ndarray
    masks: np.ndarray | None
    texts: list[str]
    image_id: str
    kinds: list[str] = field(default_factory=list)
    void: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.texts)
        if self.masks is not None and (
            self.masks.ndim != 3 or self.masks.shape[0] != n or self.masks.shape[1:] != self.image.shape[:2]
        ):
            raise ValueError(
                f"sample {self.image_id}: masks {self.masks.shape} do not match {n} expression(s) "
                f"on an image of size {self.image.shape[:2]}"
            )
        if self.void is not None and (self.void.dtype != bool or self.void.shape != self.image.shape[:2]):
            raise ValueError(
                f"sample {self.image_id}: void must be a bool mask of the image's size "
                f"{self.image.shape[:2]}, got {self.void.dtype} {self.void.shape}"
            )
        if self.kinds and len(self.kinds) != n:
            raise ValueError(f"sample {self.image_id}: {len(self.kinds)} kinds for {n} expressions")


@dataclass(frozen=True)
class SkippedItem:
    """An evaluation item that could not be read (``on_bad_sample: skip``): evaluation leaves it out
    and counts it, instead of evaluating a substitute.

    Attributes:
        image_id: which item (dataset name and index).
        reason: the error message, naming the file and the field or id.
    """

    image_id: str
    reason: str
