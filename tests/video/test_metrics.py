"""DAVIS's J and F (davis2017-evaluation ``metrics.py``) on hand-made masks."""

import numpy as np
import pytest

from evf.video.metrics import ClipScores, boundary, contour_accuracy, disk, region_similarity


def square(top, left, size=30, shape=(100, 100)):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def brute_force_boundary(mask):
    """seg2bmap by its definition: a pixel differs from its right, lower or lower-right neighbour
    (neighbours outside the image read as empty); the last row / column compare along the edge."""
    h, w = mask.shape
    padded = np.pad(mask, ((0, 1), (0, 1)))
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                out[y, x] = mask[y, x] != padded[y, x + 1]
            elif x == w - 1:
                out[y, x] = mask[y, x] != padded[y + 1, x]
            else:
                out[y, x] = any(mask[y, x] != padded[y + dy, x + dx] for dy, dx in ((0, 1), (1, 0), (1, 1)))
    return out


def test_boundary_map_and_disk():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((9, 11)) > 0.5
        assert np.array_equal(boundary(mask), brute_force_boundary(mask))
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13


def test_region_similarity():
    a, b = square(10, 10), square(10, 25)
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, b) == pytest.approx(15 * 30 / (45 * 30))
    assert region_similarity(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty
    assert region_similarity(a, np.zeros_like(a)) == 0.0
    void = np.zeros_like(a)
    void[:, 25:] = True  # only the overlap-free left part counts
    assert region_similarity(a, b, void) == 0.0


def test_contour_accuracy_tolerates_two_pixels_on_a_100px_image():
    a = square(10, 10)
    assert contour_accuracy(a, a) == 1.0
    assert contour_accuracy(square(12, 10), a) == 1.0  # ceil(0.008 * 141.4) = 2 px
    assert contour_accuracy(square(13, 10), a) < 1.0 and contour_accuracy(square(12, 12), a) < 1.0  # 2.8 px
    assert contour_accuracy(square(50, 50), a) < 0.2
    empty = np.zeros_like(a)
    assert contour_accuracy(empty, empty) == 1.0
    assert contour_accuracy(empty, a) == 0.0 and contour_accuracy(a, empty) == 0.0


def test_clip_scores_average_objects_of_frame_means():
    scores = ClipScores(2)
    truth = np.zeros((100, 100), np.uint8)
    truth[square(10, 10)] = 1
    truth[square(60, 60)] = 2
    perfect = np.stack([truth == 1, truth == 2])
    scores.add(0, perfect, truth)
    scores.add(1, np.stack([truth == 1, np.zeros_like(truth, bool)]), truth)
    summary = scores.summary()
    assert summary["per_object"] == [{"J": 1.0, "F": 1.0}, {"J": 0.5, "F": 0.5}]
    assert (summary["J"], summary["F"], summary["J&F"], summary["frames"]) == (0.75, 0.75, 0.75, 2)
