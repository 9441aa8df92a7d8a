"""What the demo page shows: prompt marks on the image, the masks in colours, their legend and timing."""

from __future__ import annotations

from html import escape

import numpy as np
from PIL import Image, ImageDraw

from evf.demo.session import DemoResult
from evf.prompts import Prompt
from evf.visualize import overlay

# One colour per mask, in prompt order (repeating after ten); none is the points' green or red.
PALETTE = np.array(
    [
        [230, 40, 230], [30, 144, 255], [255, 165, 0], [0, 206, 209], [255, 215, 0],
        [148, 103, 189], [255, 105, 180], [140, 86, 75], [127, 255, 212], [188, 189, 34],
    ],
    dtype=np.uint8,
)  # fmt: skip
FOREGROUND, BACKGROUND, BOX = (0, 200, 0), (230, 0, 0), (255, 255, 255)


def colour(k: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[k % len(PALETTE)])


def prompt_marks(
    image: np.ndarray,
    points: list[tuple[tuple[float, float], int]],
    box: tuple[float, float, float, float] | None,
    pending_corner: tuple[int, int] | None = None,
) -> np.ndarray:
    """``image`` with foreground points in green, background points in red, the box outlined and the
    first corner of a box being drawn as a small cross."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    r = max(3, round(max(image.shape[:2]) / 80))  # visible on a 100 px image and on a 4000 px one
    if box is not None:
        draw.rectangle(box, outline=BOX, width=max(1, r // 2))
    for (x, y), label in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=FOREGROUND if label else BACKGROUND, outline=BOX)
    if pending_corner is not None:
        x, y = pending_corner
        draw.line((x - r, y, x + r, y), fill=BOX, width=2)
        draw.line((x, y - r, x, y + r), fill=BOX, width=2)
    return np.asarray(canvas)


def masks_overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Each ``[n,H,W]`` mask filled into ``image`` in its palette colour, in order (later ones on top)."""
    out = image
    for k, mask in enumerate(masks):
        out = overlay(out, mask, colour=PALETTE[k % len(PALETTE)])
    return out


def describe(prompt: Prompt) -> str:
    """A prompt in one line: its text, then its points and box."""
    parts = [prompt.text] if prompt.text else []
    if prompt.points:
        n_fg = sum(prompt.point_labels)
        parts.append(f"{n_fg} fg / {len(prompt.points) - n_fg} bg point(s)")
    if prompt.box is not None:
        parts.append("box " + ",".join(f"{v:g}" for v in prompt.box))
    return " + ".join(parts)


def legend_html(result: DemoResult) -> str:
    """A table: colour, expression, predicted IoU, presence and area of every mask."""
    rows = []
    masks, scores = result.prediction.masks, result.prediction.scores
    for k, (prompt, score, presence) in enumerate(zip(result.prompts, scores, result.presence, strict=True)):
        swatch = "rgb({},{},{})".format(*colour(k))
        cells = [
            f'<span style="display:inline-block;width:1em;height:1em;background:{swatch}"></span> {k + 1}',
            escape(describe(prompt)),
            f"{float(score):.3f}",
            f"{presence:.3f}",
            f"{int(masks[k].sum()):,}",
        ]
        rows.append('<tr class="evf-mask">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "<tr><th>mask</th><th>prompt</th><th>score (pred. IoU)</th><th>presence</th><th>area (px)</th></tr>"
    )
    return f'<table class="evf-legend">{head}{"".join(rows)}</table>'


def timing_text(result: DemoResult) -> str:
    """Encoder and decoder time of a request, saying whether the image encoder ran for it."""
    when = "in this request" if result.encoded_now else "at upload, reused"
    return (
        f"**encode** {result.encode_ms:.0f} ms ({when}) · **decode** {result.decode_ms:.0f} ms "
        f"for {len(result.prompts)} prompt(s)"
    )


__all__ = ["PALETTE", "describe", "legend_html", "masks_overlay", "prompt_marks", "timing_text"]
