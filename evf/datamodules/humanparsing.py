"""HumanParsing (the ATR human-parsing set in the ``humanparsing`` folder EVF-SAM trains on).

Layout::

    JPEGImages/<name>.jpg
    SegmentationClassAug/<name>.png      8-bit ids 0..17 (LIP-style parts: hat, hair, upper clothes, ...)

One item per label map (the set has no official split: ``train`` is all of it). Expressions are
``"[semantic] <part>"`` for the parts present, background included as EVF-SAM does.

Left and right: the dataset labels the *person's* left arm "left-arm", which a viewer sees on the
right of the picture. RefCOCO's "left" is the viewer's side, so (as EVF-SAM's
``humanparsing_dataset``) every left/right label is renamed to the viewer's side: id 14, which
the dataset calls "left-arm" (the person's left arm), reads "right arm". A horizontal-flip
augmentation swaps the words again.
"""

from __future__ import annotations

from pathlib import Path

from evf.datamodules.common import DataError, OnBadSample, require_dir
from evf.datamodules.semantic import LabelMapDataset, label_pairs

HUMAN_PARTS = {
    0: "background", 1: "hat", 2: "hair", 3: "sunglasses", 4: "upper clothes", 5: "skirt", 6: "pants",
    7: "dress", 8: "belt",
    9: "right shoe",    # dataset "left-shoe": the person's left, the viewer's right
    10: "left shoe",    # dataset "right-shoe"
    11: "face",
    12: "right leg",    # dataset "left-leg"
    13: "left leg",     # dataset "right-leg"
    14: "right arm",    # dataset "left-arm"
    15: "left arm",     # dataset "right-arm"
    16: "bag", 17: "scarf",
}  # fmt: skip
"""Label id -> part name, left/right on the viewer's side."""

IGNORE = frozenset({255})


class HumanParsingDataset(LabelMapDataset):
    """HumanParsing part masks with ``[semantic]`` prompts.

    Args:
        root: the ``humanparsing`` folder (``JPEGImages/``, ``SegmentationClassAug/``).
        split: ``train`` (every image; the set has no other split).
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        if split != "train":
            raise DataError(f"humanparsing has a single split, 'train' (all images), not {split!r}")
        root = Path(root)
        images = require_dir(root / "JPEGImages", "HumanParsing image folder")
        pairs = label_pairs(images, require_dir(root / "SegmentationClassAug", "HumanParsing label folder"))
        super().__init__(
            "humanparsing/train", pairs, HUMAN_PARTS, IGNORE, seed, max_expressions, augment, on_bad_sample
        )
