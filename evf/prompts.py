"""`Prompt`: one thing to segment in an image (an expression, points and/or a box).

A model-level type: the batch builder, the decode path, `evf.Predictor`, ``evf predict`` and the
manifests all speak it. Coordinates are original-image pixels; `evf.batch` maps them into the
backend's input frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Prompt:
    """One thing to segment: an expression, points and/or a box (original-image pixels).

    Raises ValueError (at construction) for a prompt with nothing in it, points and labels of
    different counts, labels other than 0/1, or a box that is not ``x0 <= x1, y0 <= y1``.
    """

    text: str | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()  # default: every point foreground
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        text = self.text.strip() if self.text else None
        self.text = text or None
        points = tuple((float(x), float(y)) for x, y in self.points)
        labels = tuple(int(v) for v in self.point_labels) or (1,) * len(points)
        self.points = points
        self.point_labels = labels
        if not (self.text or points or self.box is not None):
            raise ValueError("a prompt needs a text, points or a box")
        if len(labels) != len(points):
            raise ValueError(f"{len(points)} point(s) but {len(labels)} label(s)")
        if set(labels) - {0, 1}:
            raise ValueError(f"point labels must be 1 (foreground) or 0 (background), got {list(labels)}")
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4 or box[0] > box[2] or box[1] > box[3]:
                raise ValueError(f"a box is x0, y0, x1, y1 with x0 <= x1 and y0 <= y1, got {list(self.box)}")
            self.box = box

    def record(self) -> dict[str, Any]:
        """The prompt's fields for ``predictions.json`` (``prompt`` is the text or null)."""
        out: dict[str, Any] = {"prompt": self.text}
        if self.points:
            out["points"], out["point_labels"] = [list(p) for p in self.points], list(self.point_labels)
        if self.box is not None:
            out["box"] = list(self.box)
        return out

    @property
    def kind(self) -> tuple[bool, bool, int]:
        """``(has text, has box, point count)``: prompts of one kind decode together, each with
        exactly the decoder tokens it would get alone (no padding between prompts)."""
        return self.text is not None, self.box is not None, len(self.points)


def as_prompts(
    prompts: str | Prompt | Sequence[str | Prompt] | None,
    points: Sequence[np.ndarray] | np.ndarray | None = None,
    point_labels: Sequence[np.ndarray] | np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> list[Prompt]:
    """What a predictor's ``predict`` takes -> `Prompt` s: one expression or `Prompt`, a list of
    them, or SamPredictor-style per-prompt arrays (`prompts_from_arrays`).

    Raises:
        ValueError: no prompt at all, lists of different lengths, or a malformed prompt.
    """
    if isinstance(prompts, str | Prompt):
        prompts = [prompts]
    if prompts is None or any(x is not None for x in (points, point_labels, boxes)):
        prompts = prompts_from_arrays(prompts, points, point_labels, boxes)
    prompts = [p if isinstance(p, Prompt) else Prompt(p) for p in prompts]
    if not prompts:
        raise ValueError("predict needs at least one prompt (text, points or a box)")
    return prompts


def prompts_from_arrays(
    texts: Sequence[str | Prompt] | None,
    points: Sequence[np.ndarray] | np.ndarray | None = None,
    point_labels: Sequence[np.ndarray] | np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> list[Prompt]:
    """Parallel per-prompt lists (SamPredictor style) -> `Prompt` s.

    Raises:
        ValueError: no prompt at all, or lists of different lengths.
    """
    counts = {len(x) for x in (texts, points, boxes) if x is not None}
    if not counts or counts == {0}:
        raise ValueError("predict needs at least one prompt (text, points or a box)")
    if len(counts) > 1:
        raise ValueError(
            f"prompts, points and boxes must have one entry per prompt, got lengths {sorted(counts)}"
        )
    prompts = []
    for i in range(counts.pop()):
        text = None if texts is None else texts[i]
        if isinstance(text, Prompt):
            if points is not None or boxes is not None:
                raise ValueError(f"prompt {i} is a Prompt: give its points and box inside it, not beside it")
            prompts.append(text)
            continue
        xy = () if points is None else np.asarray(points[i], dtype=np.float32).reshape(-1, 2)
        labels = () if point_labels is None else np.asarray(point_labels[i]).reshape(-1)
        if len(labels) and len(labels) != len(xy):
            raise ValueError(f"prompt {i}: {len(xy)} points but {len(labels)} labels")
        prompts.append(Prompt(text, xy, labels, None if boxes is None else boxes[i]))
    return prompts


__all__ = ["Prompt", "as_prompts", "prompts_from_arrays"]
