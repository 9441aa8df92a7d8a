"""Point and box prompts -> the coordinates and labels each backend family's geometry graph embeds
(`SamBackend.embed_geometry`), in numpy: the family's own order and padding, as its PyTorch
``_embed_prompts`` builds them. Labels: 1 foreground, 0 background, -1 padding, 2 / 3 a box's
corners. Torch-free (`evf.deploy.OnnxPredictor`); parity with the PyTorch path: tests/deploy.
"""

from __future__ import annotations

import numpy as np

PAD = (0.0, 0.0)


def compose(
    family: str,
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    max_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One prompt's geometry in the input frame -> ``([K,2] coords, [K] labels)``, or None for a
    prompt without points or box (its sparse prompt is the text token alone).

    Args:
        family: ``sam``, ``sam2`` or ``efficient_sam``.
        points: ``[k,2]`` (x, y), or None; labels: ``[k]`` 1 / 0.
        box: ``[4]`` (x0, y0, x1, y1), or None.
        max_points: EfficientSAM's decoder width (its prompts are padded to it).
    """
    has_points = points is not None and len(points) > 0
    if not has_points and box is None:
        return None
    xy = np.asarray(points, dtype=np.float32).reshape(-1, 2) if has_points else np.zeros((0, 2), np.float32)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1) if has_points else np.zeros(0, np.int64)
    corners = None if box is None else (np.asarray(box, dtype=np.float32).reshape(2, 2), np.array([2, 3]))
    if family == "sam":  # upstream: points (padded with one point when there is no box), then the box
        parts = [(xy, lab)] + (
            [(np.array([PAD], np.float32), np.array([-1]))] if corners is None else [corners]
        )
    elif family == "sam2":  # SAM2ImagePredictor: box corners, points, then sam2's padding point
        parts = ([corners] if corners else []) + [(xy, lab), (np.array([PAD], np.float32), np.array([-1]))]
    elif family == "efficient_sam":  # box corners, points, padded to max_points with (-1, -1) / -1
        parts = ([corners] if corners else []) + [(xy, lab)]
    else:
        raise ValueError(f"no geometry rule for backend family {family!r}")
    coords = np.concatenate([c for c, _ in parts]).astype(np.float32)
    out_labels = np.concatenate([lb for _, lb in parts]).astype(np.int64)
    if family == "efficient_sam":
        if max_points is None or len(coords) > max_points:
            raise ValueError(
                f"EfficientSAM takes at most {max_points} points (a box counts 2), got {len(coords)}"
            )
        coords = np.where(coords >= 0, coords, -1.0).astype(np.float32)
        missing = max_points - len(coords)
        coords = np.concatenate([coords, np.full((missing, 2), -1.0, np.float32)])
        out_labels = np.concatenate([out_labels, np.full(missing, -1, np.int64)])
    return coords, out_labels


__all__ = ["compose"]
