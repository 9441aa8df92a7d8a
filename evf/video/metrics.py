"""Region similarity J and contour accuracy F, as the DAVIS 2017 evaluation defines them.

* J: the Jaccard index of the predicted and true masks; 1 when both are empty.
* F: the F-measure of boundary precision and recall. A mask's boundary is the 1-pixel map of pixels
  whose right, lower or lower-right neighbour differs (the last row and column compare along the
  edge only); a boundary pixel matches when the other boundary lies within a disk of radius
  ``ceil(0.008 * image diagonal)`` pixels. No boundary on either side is a perfect match, a boundary
  on one side only has precision or recall 0.
* Void pixels (label 255 in DAVIS annotations) count for neither.

A clip's J (F) is the mean over objects of each object's mean over the annotated frames, and J&F
their average, as DAVIS reports ``J&F-Mean``. Every annotated frame counts: DAVIS's semi-supervised
protocol drops the first and last frame because the first frame's mask is given, a text prompt gives
none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from evf.io import read_label
from evf.video.errors import VideoError

BOUNDARY_TOLERANCE = 0.008  # of the image diagonal (DAVIS's bound_th)
VOID_LABEL = 255


def region_similarity(pred: np.ndarray, truth: np.ndarray, void: np.ndarray | None = None) -> float:
    """J of two bool ``[H,W]`` masks."""
    valid = np.ones_like(truth, dtype=bool) if void is None else ~void
    union = np.count_nonzero((pred | truth) & valid)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & truth & valid) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """The 1-pixel boundary map of a bool ``[H,W]`` mask (DAVIS's ``seg2bmap`` at full size)."""
    right, below, diagonal = (np.zeros_like(mask) for _ in range(3))
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    diagonal[:-1, :-1] = mask[1:, 1:]
    edges = (mask ^ right) | (mask ^ below) | (mask ^ diagonal)
    edges[-1, :] = mask[-1, :] ^ right[-1, :]
    edges[:, -1] = mask[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def disk(radius: int) -> np.ndarray:
    """uint8 ``[2r+1, 2r+1]`` disk: offsets with ``dx² + dy² <= r²``."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def contour_accuracy(pred: np.ndarray, truth: np.ndarray, void: np.ndarray | None = None) -> float:
    """F of two bool ``[H,W]`` masks."""
    if void is not None:
        pred, truth = pred & ~void, truth & ~void
    radius = math.ceil(BOUNDARY_TOLERANCE * math.hypot(*pred.shape))
    pred_edges, true_edges = boundary(pred), boundary(truth)
    kernel = disk(radius)
    near_pred = cv2.dilate(pred_edges.astype(np.uint8), kernel).astype(bool)
    near_truth = cv2.dilate(true_edges.astype(np.uint8), kernel).astype(bool)
    n_pred, n_true = np.count_nonzero(pred_edges), np.count_nonzero(true_edges)
    if n_pred == 0 or n_true == 0:
        precision, recall = (1.0, 1.0) if n_pred == n_true else (float(n_pred == 0), float(n_true == 0))
    else:
        precision = np.count_nonzero(pred_edges & near_truth) / n_pred
        recall = np.count_nonzero(true_edges & near_pred) / n_true
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass
class ClipScores:
    """Per-frame J and F of each object, accumulated frame by frame.

    Attributes:
        j, f: per object, the values of its annotated frames in order.
        frames: the clip indices of the annotated frames.
    """

    num_objects: int
    j: list[list[float]] = field(default_factory=list)
    f: list[list[float]] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.j = self.j or [[] for _ in range(self.num_objects)]
        self.f = self.f or [[] for _ in range(self.num_objects)]

    def add(self, frame: int, pred: np.ndarray, labels: np.ndarray) -> None:
        """Score bool masks ``[n,H,W]`` (object ``k`` = label ``k + 1``) against a label map ``[H,W]``."""
        void = labels == VOID_LABEL
        for k in range(self.num_objects):
            truth = labels == k + 1
            self.j[k].append(region_similarity(pred[k], truth, void))
            self.f[k].append(contour_accuracy(pred[k], truth, void))
        self.frames.append(frame)

    def summary(self) -> dict:
        """``J``, ``F``, ``J&F`` (means over objects of per-object means) and ``per_object``."""
        if not self.frames:
            return {"J": None, "F": None, "J&F": None, "frames": 0, "per_object": []}
        per_object = [
            {"J": float(np.mean(j)), "F": float(np.mean(f))} for j, f in zip(self.j, self.f, strict=True)
        ]
        j = float(np.mean([o["J"] for o in per_object]))
        f = float(np.mean([o["F"] for o in per_object]))
        return {"J": j, "F": f, "J&F": (j + f) / 2, "frames": len(self.frames), "per_object": per_object}


class Annotations:
    """A folder of DAVIS-style annotations: one label PNG per frame (pixel ``k`` = the object of the
    ``k``-th prompt, 0 background, 255 void), named like the frame (``00012.jpg`` -> ``00012.png``;
    frame 12 of a video file -> ``00012.png``). Frames without a file are not scored.

    Raises:
        VideoError: the folder does not exist or holds no PNG.
    """

    def __init__(self, directory: str | Path, num_objects: int) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise VideoError(f"ground truth folder not found: {self.directory}")
        self.files = {p.stem: p for p in self.directory.glob("*.png")}
        if not self.files:
            raise VideoError(f"{self.directory}: no annotation PNGs")
        self.num_objects = num_objects

    def labels(self, frame_name: str, size: tuple[int, int]) -> np.ndarray | None:
        """The label map of a frame, or None when it has none.

        Raises:
            VideoError: the annotation's size differs from the frame's, or it holds an object id
                beyond the number of prompts.
        """
        path = self.files.get(Path(frame_name).stem)
        if path is None:
            return None
        labels = read_label(path)
        if labels.shape != tuple(size):
            raise VideoError(
                f"{path}: annotation is {labels.shape[1]}x{labels.shape[0]}, the frame {size[1]}x{size[0]}"
            )
        ids = set(np.unique(labels).tolist()) - {0, VOID_LABEL}
        if ids and max(ids) > self.num_objects:
            raise VideoError(f"{path}: object id {max(ids)}, but {self.num_objects} prompt(s) were given")
        return labels


__all__ = ["Annotations", "ClipScores", "boundary", "contour_accuracy", "disk", "region_similarity"]
