"""REFER-layout datasets (RefCOCO, RefCOCOg, RefCLEF) and gRefCOCO on tiny files in the real layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from evf.datamodules import DataError, GRefCOCODataset, ReferDataset
from evf.datamodules.refer import load_refs

from .fixtures import GRef, Ref, ReferImage, picture, write_grefcoco, write_refer


def _refcoco_images() -> list[ReferImage]:
    return [
        ReferImage(
            40,
            60,
            [
                Ref([(2, 3, 20, 30)], ["man on the left", "left guy"], "train"),
                Ref([(30, 5, 55, 35), (10, 32, 20, 38)], ["dog"], "train"),  # two polygons, one object
                Ref([(5, 5, 9, 9)], ["small thing", "tiny box", "corner"], "train", "rle"),
                Ref([(40, 30, 50, 38)], ["bottom right"], "train", "uncompressed"),
            ],
        ),
        ReferImage(30, 50, [Ref([(0, 0, 10, 10)], ["top left"], "train")]),
        ReferImage(
            32,
            48,
            [
                Ref([(1, 1, 30, 20)], ["the café table", "table"], "val"),
                Ref([(31, 2, 47, 31)], ["lamp"], "val"),
            ],
        ),
        ReferImage(36, 44, [Ref([(3, 4, 20, 30)], ["person in red"], "testA")]),
        ReferImage(
            36, 44, [Ref([(10, 10, 30, 30)], ["cat"], "testB"), Ref([(0, 0, 4, 4)], ["dot"], "testB")]
        ),
    ]


@pytest.fixture(scope="module")
def refcoco(tmp_path_factory) -> tuple[Path, list[ReferImage]]:
    root = tmp_path_factory.mktemp("refer_seg")
    images = _refcoco_images()
    write_refer(root, "refcoco", "unc", images)
    return root, images


def test_split_sizes_follow_the_refs(refcoco) -> None:
    root, _ = refcoco
    sizes = {
        split: len(ReferDataset(root, "refcoco", split, max_expressions=None))
        for split in ("train", "val", "testA", "testB")
    }
    assert sizes == {"train": 2, "val": 1, "testA": 1, "testB": 1}
    assert len(ReferDataset(root, "refcoco", "test")) == 2  # REFER: "test" = every split naming test
    with pytest.raises(DataError, match=r"no refs in split 'testC'.*'testA', 'testB', 'train', 'val'"):
        ReferDataset(root, "refcoco", "testC")


def test_evaluation_items_hold_every_sentence_with_its_mask(refcoco) -> None:
    root, images = refcoco
    sample = ReferDataset(root, "refcoco", "val", max_expressions=None).sample(0, epoch=0)
    image = images[2]
    assert sample.texts == ["the café table", "table", "lamp"]  # Python-2 UTF-8 byte strings decoded
    expected = [image.truth[0], image.truth[0], image.truth[1]]
    assert sample.masks.dtype == bool and sample.masks.shape == (3, 32, 48)
    for got, want in zip(sample.masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sample.image.shape == (32, 48, 3) and sample.image.dtype == np.uint8
    assert np.abs(sample.image.astype(int) - picture(32, 48, image.image_id)).mean() < 3  # JPEG round trip
    assert sample.image_id == f"refcoco/{image.file_name}" and sample.kinds == []


def test_training_draws_three_referents_one_sentence_each(refcoco) -> None:
    root, images = refcoco
    dataset = ReferDataset(root, "refcoco", "train", seed=5)
    truth = {
        s: mask for ref, mask in zip(images[0].refs, images[0].truth, strict=True) for s in ref.sentences
    }
    owner = {s: i for i, ref in enumerate(images[0].refs) for s in ref.sentences}
    seen = set()
    for epoch in range(6):
        sample = dataset.sample(0, epoch)
        assert len(sample.texts) == 3 and len({owner[t] for t in sample.texts}) == 3
        for text, mask in zip(sample.texts, sample.masks, strict=True):
            np.testing.assert_array_equal(
                mask, truth[text]
            )  # polygons, two-polygon union, RLE, uncompressed RLE
        again = dataset.sample(0, epoch)
        assert again.texts == sample.texts and np.array_equal(again.masks, sample.masks)
        seen.add(tuple(sample.texts))
    assert len(seen) > 1, "the draws should change with the epoch"
    assert dataset.sample(1, 0).texts == ["top left"]
    other_seed = ReferDataset(root, "refcoco", "train", seed=6)
    assert {tuple(other_seed.sample(0, e).texts) for e in range(6)} != seen


def test_refcocog_umd_google_and_refclef_splits(tmp_path: Path) -> None:
    g_images = [
        ReferImage(20, 20, [Ref([(0, 0, 5, 5)], ["a"], split)]) for split in ("train", "val", "test", "val")
    ]
    write_refer(tmp_path, "refcocog", "umd", g_images)
    assert [len(ReferDataset(tmp_path, "refcocog", s)) for s in ("train", "val", "test")] == [1, 2, 1]
    write_refer(tmp_path, "refcocog", "google", g_images[:2])
    assert ReferDataset(tmp_path, "refcocog", "val", split_by="google").name == "refcocog(google)/val"

    clef = [
        ReferImage(24, 30, [Ref([(2, 2, 12, 20)], ["sky"], split, "rle_list")])
        for split in ("testA", "testAB", "testC")
    ]
    write_refer(tmp_path, "refclef", "unc", clef)
    assert [len(ReferDataset(tmp_path, "refclef", s)) for s in ("testA", "testB", "testC", "test")] == [
        2,
        1,
        1,
        3,
    ]
    sample = ReferDataset(tmp_path, "refclef", "testC", max_expressions=None).sample(0, 0)
    np.testing.assert_array_equal(sample.masks[0], clef[2].truth[0])
    assert sample.image_id == f"refclef/{clef[2].file_name}"  # saiapr_tc-12/<n>/images/<id>.jpg


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_refs_pickle_is_refused_without_running_it(refcoco, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps([{"ref_id": 0, "sentences": [_Payload(marker)]}], protocol=2))
    with pytest.raises(
        DataError, match=r"refusing to load .*refs\(unc\)\.p: it names the global (posix|nt|os)\.system"
    ):
        load_refs(bad)
    assert not marker.exists()
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="not a readable pickle"):
        load_refs(bad)


def test_grefcoco_multi_and_no_target_expressions(tmp_path: Path) -> None:
    objects = [[(2, 2, 10, 10)], [(20, 5, 30, 25), (12, 20, 18, 28)], [(0, 30, 40, 36)]]
    grefs = [
        GRef([0], ["left block"], "val"),
        GRef([0, 1], ["both blocks", "two things"], "val"),
        GRef([], ["the giraffe"], "val"),
        GRef([2], ["bottom bar"], "train"),
    ]
    (truth,) = write_grefcoco(tmp_path, [(36, 40, objects, grefs)])
    sample = GRefCOCODataset(tmp_path, "val", max_expressions=None).sample(0, 0)
    assert sample.texts == ["left block", "both blocks", "two things", "the giraffe"]
    assert sample.kinds == ["single_target", "multi_target", "multi_target", "no_target"]
    for got, want in zip(sample.masks, [truth[0], truth[1], truth[1], truth[2]], strict=True):
        np.testing.assert_array_equal(got, want)
    assert not sample.masks[3].any() and sample.masks[1].sum() == 64 + 200 + 48
    train = GRefCOCODataset(tmp_path, "train").sample(0, 3)
    assert train.texts == ["bottom bar"] and np.array_equal(train.masks[0], truth[3])
