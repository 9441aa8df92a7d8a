"""Training augmentation: albumentations, seeded per item, with flip-aware expressions.

A horizontal flip changes what "left" and "right" mean, so when the image is flipped every
"left"/"right" word of the expressions is swapped (with its suffixes: "leftmost" <-> "rightmost",
"left-hand" <-> "right-hand"; capitalisation kept). The photometric part changes brightness and
contrast only: a hue shift could turn "the red car" into a lie.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from evf.datamodules.sample import Sample

_SIDE = re.compile(r"\b(left|right)(most|ward|wards|hand|handed|side)?\b", re.IGNORECASE)


def _swap(match: re.Match) -> str:
    word, suffix = match.group(1), match.group(2) or ""
    other = "right" if word.lower() == "left" else "left"
    if word.isupper():
        other = other.upper()
    elif word[0].isupper():
        other = other.capitalize()
    return other + suffix


def swap_left_right(text: str) -> str:
    """``"the man on the left"`` -> ``"the man on the right"``; also leftmost/rightmost etc."""
    return _SIDE.sub(_swap, text)


class Augmenter:
    """Horizontal flip (p = 0.5) and brightness/contrast jitter (p = 0.5) of an image and its masks.

    Args:
        flip: probability of a horizontal flip.
        photometric: probability of a brightness/contrast change (at most +-20 %).
    """

    def __init__(self, flip: float = 0.5, photometric: float = 0.5) -> None:
        import albumentations as A  # deferred: ~1 s of imports, needed only when augmenting

        self.pipeline = A.Compose(
            [
                A.HorizontalFlip(p=flip),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=photometric),
            ],
            save_applied_params=True,
        )

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """The augmented copy of ``sample``; its random choices come from ``rng`` only."""
        self.pipeline.set_random_seed(int(rng.integers(2**31)))
        targets: dict[str, np.ndarray] = {"image": sample.image}
        if sample.masks is not None:
            targets["masks"] = sample.masks
        if sample.void is not None:
            targets["mask"] = sample.void  # albumentations' single mask: flipped with the image
        out = self.pipeline(**targets)
        flipped = any(name == "HorizontalFlip" for name, _ in out["applied_transforms"])
        texts = [swap_left_right(t) for t in sample.texts] if flipped else list(sample.texts)
        masks = None if sample.masks is None else np.ascontiguousarray(out["masks"], dtype=bool)
        void = None if sample.void is None else np.ascontiguousarray(out["mask"], dtype=bool)
        return replace(sample, image=np.ascontiguousarray(out["image"]), masks=masks, texts=texts, void=void)
