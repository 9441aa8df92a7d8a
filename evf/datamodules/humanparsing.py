"""Human parsing: ATR (the ``humanparsing`` folder EVF-SAM trains on), LIP and CIHP.

The label set is explicit (option ``labels``) and decides the folder layout read::

    labels: atr (18 labels; split train = every image)
        JPEGImages/<name>.jpg
        SegmentationClassAug/<name>.png
    labels: lip (20 labels; splits train, val), the LIP release
        TrainVal_images/{train,val}_images/<name>.jpg
        TrainVal_parsing_annotations/{train,val}_segmentations/<name>.png
    labels: cihp (20 labels; splits train, val), root = instance-level_human_parsing/
        {Training,Validation}/Images/<name>.jpg
        {Training,Validation}/Category_ids/<name>.png

(LIP's zips may extract to a doubled folder, ``TrainVal_images/TrainVal_images/...``; both are read.)
Label maps hold 8-bit ids; 255 is ignored. A value outside the configured label set is an error
naming the file, and a root laid out for another label set is an error saying which: a label
set is never guessed. LIP and CIHP share 20 labels except id 10 (LIP: jumpsuits, CIHP: torso skin).

Expressions are ``"[semantic] <part>"`` for the parts present, background included as EVF-SAM
does. Left and right: the datasets label the *person's* left arm "left-arm", which a viewer sees
on the right of the picture. RefCOCO's "left" is the viewer's side, so (as EVF-SAM's
``humanparsing_dataset``) every left/right label is renamed to the viewer's side: ATR's id 14,
which the dataset calls "left-arm", reads "right arm". A horizontal-flip augmentation swaps the
words again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from evf.datamodules.common import DataError, OnBadSample
from evf.datamodules.semantic import LabelMapDataset, label_pairs

ATR_PARTS = {
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
"""ATR label id -> part name, left/right on the viewer's side."""

LIP_PARTS = {
    0: "background", 1: "hat", 2: "hair", 3: "glove", 4: "sunglasses", 5: "upper clothes", 6: "dress",
    7: "coat", 8: "socks", 9: "pants", 10: "jumpsuits", 11: "scarf", 12: "skirt", 13: "face",
    14: "right arm",    # dataset "Left-arm": the person's left, the viewer's right
    15: "left arm",     # dataset "Right-arm"
    16: "right leg",    # dataset "Left-leg"
    17: "left leg",     # dataset "Right-leg"
    18: "right shoe",   # dataset "Left-shoe"
    19: "left shoe",    # dataset "Right-shoe"
}  # fmt: skip
"""LIP label id -> part name, left/right on the viewer's side."""

CIHP_PARTS = {**LIP_PARTS, 10: "torso skin"}
"""CIHP label id -> part name: LIP's, except id 10."""

LabelSet = Literal["atr", "lip", "cihp"]
LABEL_SETS: dict[str, dict[int, str]] = {"atr": ATR_PARTS, "lip": LIP_PARTS, "cihp": CIHP_PARTS}

LAYOUTS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "atr": {"train": (("JPEGImages",), ("SegmentationClassAug",))},
    "lip": {
        split: (
            (f"TrainVal_images/{split}_images", f"TrainVal_images/TrainVal_images/{split}_images"),
            (
                f"TrainVal_parsing_annotations/{split}_segmentations",
                f"TrainVal_parsing_annotations/TrainVal_parsing_annotations/{split}_segmentations",
            ),
        )
        for split in ("train", "val")
    },
    "cihp": {
        split: ((f"{folder}/Images",), (f"{folder}/Category_ids",))
        for split, folder in (("train", "Training"), ("val", "Validation"))
    },
}
"""Label set -> split -> (image folder candidates, label folder candidates), relative to ``root``."""

IGNORE = frozenset({255})


def _first_dir(root: Path, candidates: tuple[str, ...]) -> Path | None:
    return next((root / c for c in candidates if (root / c).is_dir()), None)


def _other_layouts(root: Path, labels: str) -> list[str]:
    """The label sets (other than ``labels``) whose label folders exist under ``root``."""
    return [
        name
        for name, splits in LAYOUTS.items()
        if name != labels and any(_first_dir(root, folders[1]) for folders in splits.values())
    ]


class HumanParsingDataset(LabelMapDataset):
    """Human-parsing part masks with ``[semantic]`` prompts (see the module docstring).

    Args:
        root: the dataset folder of the label set's layout.
        split: ``train`` (ATR: every image), or ``val`` (LIP, CIHP).
        labels: the label set, ``atr`` (18 labels), ``lip`` or ``cihp`` (20 labels each).
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        labels: LabelSet = "atr",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        if labels not in LABEL_SETS:
            raise ValueError(
                f"unknown human-parsing label set {labels!r}; expected one of {sorted(LABEL_SETS)}"
            )
        splits = LAYOUTS[labels]
        if split not in splits:
            raise DataError(f"humanparsing ({labels}) has the split(s) {sorted(splits)}, not {split!r}")
        root = Path(root)
        image_candidates, label_candidates = splits[split]
        label_dir = _first_dir(root, label_candidates)
        if label_dir is None:
            others = _other_layouts(root, labels)
            hint = f"; {root} is laid out for labels: {others[0]} (set it in options)" if others else ""
            raise DataError(
                f"humanparsing ({labels}) label folder not found: {root / label_candidates[0]}{hint} "
                "(see docs/datasets.md for the layouts)"
            )
        image_dir = _first_dir(root, image_candidates)
        if image_dir is None:
            raise DataError(f"humanparsing ({labels}) image folder not found: {root / image_candidates[0]}")
        super().__init__(
            f"humanparsing-{labels}/{split}", label_pairs(image_dir, label_dir), LABEL_SETS[labels], IGNORE,
            seed, max_expressions, augment, on_bad_sample,
        )  # fmt: skip
