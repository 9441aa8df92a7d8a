"""A synthetic moving-shapes clip: the embedded test data of text-prompted video segmentation.

Three shapes of distinct colours and kinds move over a static shapes background (`scene`'s), each
named by one unambiguous expression ("the red circle"):

* the *mover* crosses the top of the frame from left to right for the whole clip;
* the *occluded* one crosses the bottom from left to right behind a dark wall (drawn over it), fully
  hidden on a few frames in the middle (`ShapesClip.hidden_frames`);
* the *entering* one is absent until ``enter_frame``, then slides in from the right edge along the
  middle row.

The ground truth is each object's visible pixels (DAVIS's convention: empty while hidden or absent).
`write_clip` stores the frames as JPEGs (the layout SAM-2's loader reads) and the masks as DAVIS
annotations: one palette PNG per frame whose pixel ``k`` is object ``k`` (1-based), 0 background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .expressions import COLOURS, SHAPES
from .scene import PALETTE, _background, _vertices, rasterise, scene_generator

WALL_RGB = (45, 45, 50)  # darker than any background pixel, far from every palette colour
ROWS = (0.15, 0.45, 0.82)  # centre heights of the mover, the entering and the occluded object
WALL = (0.38, 0.68, 0.66)  # x from, x to (fractions of the width), top (fraction of the height)
SIDE = 0.15  # sqrt(area) of every object, as a fraction of the shorter side


@dataclass(frozen=True)
class ShapesClip:
    """A rendered clip.

    Attributes:
        frames: uint8 ``[T,H,W,3]`` RGB.
        masks: bool ``[3,T,H,W]``: visible pixels of the mover, the occluded and the entering object.
        expressions: one per object, in the order of ``masks``.
        enter_frame: the first frame the entering object is visible on.
        hidden_frames: the frames on which the occluded object is fully hidden.
    """

    frames: np.ndarray
    masks: np.ndarray
    expressions: tuple[str, str, str]
    enter_frame: int
    hidden_frames: tuple[int, ...]


def generate_clip(seed: int = 0, num_frames: int = 24, size: tuple[int, int] = (120, 160)) -> ShapesClip:
    """Draws and renders the clip, deterministically from ``seed``.

    Args:
        seed: picks the colours, kinds and tilts of the shapes and the background.
        num_frames: clip length (at least 8).
        size: ``(height, width)`` of the frames (the shorter side at least 96).
    """
    height, width = size
    if num_frames < 8 or min(size) < 96:
        raise ValueError(f"a shapes clip needs >= 8 frames and sides >= 96 px, got {num_frames} and {size}")
    rng = scene_generator(seed, "test", 0x71D)
    colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:3]]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))]
    side = SIDE * min(height, width)
    outlines = [_vertices(rng, shape, side) for shape in shapes]
    background = _background(rng, height, width)
    reach = [max(np.hypot(dx, dy) for dx, dy in o) + 1 for o in outlines]  # bounding radius per object
    enter = num_frames // 2
    t = np.linspace(0.0, 1.0, num_frames)
    paths = [
        [(reach[0] + s * (width - 1 - 2 * reach[0]), ROWS[0] * height) for s in t],  # mover
        [(0.1 * width + s * 0.8 * width, ROWS[2] * height) for s in t],  # occluded, behind the wall
        [
            (
                width + reach[2] - (i - enter + 1) * (width * 0.45 + reach[2]) / (num_frames - enter),
                ROWS[1] * height,
            )
            for i in range(num_frames)
        ],  # entering from the right edge on `enter`
    ]
    wall = np.zeros((height, width), dtype=bool)
    wall[round(WALL[2] * height) :, round(WALL[0] * width) : round(WALL[1] * width)] = True
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((3, num_frames, height, width), dtype=bool)
    for i in range(num_frames):
        frame = background.copy()
        for k, (outline, path) in enumerate(zip(outlines, paths, strict=True)):
            x, y = path[i]
            polygon = tuple((round(x + dx), round(y + dy)) for dx, dy in outline)
            mask = rasterise(polygon, height, width)
            if k == 1:
                mask &= ~wall
            frame[mask] = PALETTE[colours[k]]
            masks[k, i] = mask
        frame[wall] = WALL_RGB
        frames[i] = frame
    expressions = tuple(f"the {c} {s}" for c, s in zip(colours, shapes, strict=True))
    hidden = tuple(int(i) for i in np.flatnonzero(~masks[1].any(axis=(1, 2))))
    first_seen = int(np.flatnonzero(masks[2].any(axis=(1, 2)))[0])
    return ShapesClip(frames, masks, expressions, first_seen, hidden)  # type: ignore[arg-type]


def write_clip(clip: ShapesClip, directory: str | Path) -> tuple[Path, Path]:
    """Write ``frames/00000.jpg ...`` and ``annotations/00000.png ...`` under ``directory``.

    Returns:
        The frames folder and the annotations folder.
    """
    directory = Path(directory)
    frames_dir, labels_dir = directory / "frames", directory / "annotations"
    frames_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    palette = [0, 0, 0] + [c for rgb in ((230, 40, 230), (0, 230, 230), (255, 140, 0)) for c in rgb]
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(frames_dir / f"{i:05d}.jpg", quality=95)
        labels = np.zeros(frame.shape[:2], dtype=np.uint8)
        for k, mask in enumerate(clip.masks[:, i]):
            labels[mask] = k + 1
        annotation = Image.fromarray(labels, mode="P")
        annotation.putpalette(palette)
        annotation.save(labels_dir / f"{i:05d}.png")
    return frames_dir, labels_dir


__all__ = ["ShapesClip", "generate_clip", "write_clip"]
