"""Augmentation: seeded per item, and a horizontal flip swaps left and right in the expressions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evf.datamodules import ReferDataset
from evf.datamodules.augment import swap_left_right

from .fixtures import Ref, ReferImage, write_refer


def test_swap_left_right_words() -> None:
    assert swap_left_right("the man on the left") == "the man on the right"
    assert (
        swap_left_right("Leftmost cup, right of the RIGHT plate") == "Rightmost cup, left of the LEFT plate"
    )
    assert (
        swap_left_right("left-hand side, rightward, lefthanded") == "right-hand side, leftward, righthanded"
    )
    assert swap_left_right("[semantic] left arm") == "[semantic] right arm"
    assert swap_left_right("bright cleft brighter") == "bright cleft brighter"  # words, not substrings


def test_augmented_items_are_seeded_and_flip_aware(tmp_path: Path) -> None:
    image = ReferImage(
        20,
        30,
        [
            Ref([(0, 0, 8, 20)], ["the leftmost bar"], "train"),
            Ref([(20, 2, 30, 10)], ["box on the right"], "train"),
            Ref([(10, 12, 14, 18)], ["middle"], "train"),
        ],
    )
    write_refer(tmp_path, "refcoco", "unc", [image])
    plain = ReferDataset(tmp_path, "refcoco", "train", seed=2)
    augmented = ReferDataset(tmp_path, "refcoco", "train", seed=2, augment=True)
    twin = ReferDataset(tmp_path, "refcoco", "train", seed=2, augment=True)
    flips = 0
    for epoch in range(10):
        base, aug = plain.sample(0, epoch), augmented.sample(0, epoch)
        again = twin.sample(0, epoch)
        assert (
            again.texts == aug.texts
            and np.array_equal(again.image, aug.image)
            and np.array_equal(again.masks, aug.masks)
        )
        if np.array_equal(aug.masks, base.masks[:, :, ::-1]):
            flips += 1
            assert aug.texts == [swap_left_right(t) for t in base.texts]
        else:
            np.testing.assert_array_equal(aug.masks, base.masks)
            assert aug.texts == base.texts
    assert 0 < flips < 10
