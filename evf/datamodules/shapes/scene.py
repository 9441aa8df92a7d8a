"""Scenes of the synthetic shapes dataset: flat-coloured polygons on a textured, greyish background.

A scene is a pure function of ``(seed, split, index)``: each split draws from its own random stream,
so splits never share scenes. Objects are circles (48–64-gons), squares and triangles, tilted by at
most 15° (a square never turns into a diamond), coloured from a four-colour palette with a small
per-object jitter. Sizes are drawn as the square root of the area, between 12% and 24% of the
shorter image side (areas vary up to 4×). Objects never overlap: their bounding circles keep a gap.

Each object's mask is its polygon rasterised by ``PIL.ImageDraw``, and the image gets the object's
colour on exactly those pixels, so masks are the drawn pixels. The background stays near grey (its
channels differ by at most ``2 * MAX_TINT``) so no background pixel comes close to a palette colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .expressions import COLOURS, SHAPES, Expression, ObjectFacts, describe

SPLITS = ("train", "val", "test")
PALETTE = {"red": (215, 45, 45), "green": (40, 170, 60), "blue": (50, 85, 215), "yellow": (230, 200, 40)}
COLOUR_JITTER = 12  # per channel, so an object is within 21 (Euclidean) of its palette colour
SIZE_RANGE = (0.12, 0.24)  # sqrt(area) as a fraction of the shorter image side
CIRCLE_SIDES = (48, 64)
MAX_TILT_DEGREES = 15.0
GAP_PX = 3.0  # between bounding circles
MAX_TINT = 12.0  # per channel, background colour cast
MAX_ATTEMPTS = 50  # whole scenes tried before giving up
PLACEMENT_TRIES = 100  # positions tried per object within one attempt
_SCENE_STREAM = 0x5CE7E  # keeps scene streams apart from other streams drawn from the same seed

Polygon = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: one of ``SHAPES``.
        colour: one of ``COLOURS``.
        rgb: the exact colour painted on the object's pixels.
        polygon: integer vertices ``(x, y)`` in PIL's pixel coordinates (pixel centres on integers).
        bbox: ``(x, y, w, h)`` of the mask's pixels.
        area: mask area in pixels.
        centre: mask centroid ``(x, y)``.
        expressions: every unambiguous expression of this object in its scene (at least one).
    """

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    polygon: Polygon
    bbox: tuple[int, int, int, int]
    area: int
    centre: tuple[float, float]
    expressions: tuple[Expression, ...]


@dataclass(frozen=True)
class Scene:
    """A rendered scene.

    Attributes:
        image: uint8 ``[H,W,3]`` RGB.
        masks: bool ``[n,H,W]``, one per object, pairwise disjoint.
        objects: ``n`` objects, in the order of ``masks``.
    """

    image: np.ndarray
    masks: np.ndarray
    objects: tuple[ShapeObject, ...]


def _vertices(rng: np.random.Generator, shape: str, side: float) -> list[tuple[float, float]]:
    """Vertex offsets from the centre of a shape whose area is ``side**2``."""
    tilt = math.radians(rng.uniform(-MAX_TILT_DEGREES, MAX_TILT_DEGREES))
    if shape == "circle":
        count, radius = int(rng.integers(CIRCLE_SIDES[0], CIRCLE_SIDES[1] + 1)), side / math.sqrt(math.pi)
        start = rng.uniform(0.0, 2 * math.pi)
    elif shape == "square":
        count, radius, start = 4, side / math.sqrt(2), tilt + math.pi / 4
    else:  # equilateral triangle, apex up (y points down)
        count, radius, start = 3, side * math.sqrt(4 / math.sqrt(3)) / math.sqrt(3), tilt - math.pi / 2
    angles = [start + 2 * math.pi * k / count for k in range(count)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _place(
    rng: np.random.Generator, radius: float, placed: list[tuple[float, float, float]], height: int, width: int
) -> tuple[float, float] | None:
    """A centre whose circle of ``radius`` lies inside the image and clear of ``placed`` circles."""
    if min(height, width) - 1 < 2 * radius:
        return None
    for _ in range(PLACEMENT_TRIES):
        x, y = rng.uniform(radius, width - 1 - radius), rng.uniform(radius, height - 1 - radius)
        if all(math.hypot(x - px, y - py) > radius + pr + GAP_PX for px, py, pr in placed):
            return x, y
    return None


def _layout(
    rng: np.random.Generator, height: int, width: int, count: int
) -> list[tuple[str, str, Polygon]] | None:
    """``count`` non-overlapping (shape, colour, polygon) triples, or ``None`` if they do not fit."""
    placed: list[tuple[float, float, float]] = []
    layout = []
    for _ in range(count):
        shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
        offsets = _vertices(rng, shape, rng.uniform(*SIZE_RANGE) * min(height, width))
        radius = max(math.hypot(dx, dy) for dx, dy in offsets) + 1.0  # + rounding of the vertices
        centre = _place(rng, radius, placed, height, width)
        if centre is None:
            return None
        placed.append((*centre, radius))
        points = [(round(centre[0] + dx), round(centre[1] + dy)) for dx, dy in offsets]
        polygon = tuple(p for i, p in enumerate(points) if p != points[i - 1])
        layout.append((shape, colour, polygon))
    return layout


def rasterise(polygon: Polygon, height: int, width: int) -> np.ndarray:
    """The pixels ``PIL.ImageDraw`` fills for ``polygon``, as a bool ``[H,W]`` mask."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(list(polygon), fill=1)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A near-grey linear gradient with a faint colour cast and low-contrast luminance texture."""
    ends = rng.uniform(70.0, 190.0, size=(2, 1)) + rng.uniform(-MAX_TINT, MAX_TINT, size=(2, 3))
    angle = rng.uniform(0.0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = ends[0] * (1 - ramp[..., None]) + ends[1] * ramp[..., None]
    coarse = rng.normal(0.0, 8.0, size=(height // 8 + 2, width // 8 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    texture = texture + rng.normal(0.0, 3.0, size=(height, width))
    return np.clip(np.rint(image + texture[..., None]), 0, 255).astype(np.uint8)


def _facts(shape: str, colour: str, mask: np.ndarray) -> ObjectFacts:
    """Colour, shape, area and centroid of one object, measured on its mask."""
    ys, xs = np.nonzero(mask)
    return ObjectFacts(colour, shape, int(mask.sum()), (float(xs.mean()), float(ys.mean())))


def _render(
    rng: np.random.Generator,
    layout: list[tuple[str, str, Polygon]],
    masks: np.ndarray,
    facts: list[ObjectFacts],
    expressions: list[list[Expression]],
) -> Scene:
    """Paints the objects on a fresh background and assembles the scene record."""
    image = _background(rng, *masks.shape[1:])
    objects = []
    for (shape, colour, polygon), mask, fact, found in zip(layout, masks, facts, expressions, strict=True):
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        rgb = tuple(int(c) for c in np.clip(np.array(PALETTE[colour]) + jitter, 0, 255))
        image[mask] = rgb
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        objects.append(ShapeObject(shape, colour, rgb, polygon, bbox, fact.area, fact.centre, tuple(found)))
    return Scene(image=image, masks=masks, objects=tuple(objects))


def scene_generator(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one scene; distinct for every ``(seed, split, index)``."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; expected one of {SPLITS}")
    return np.random.default_rng(np.random.SeedSequence([seed, _SCENE_STREAM, SPLITS.index(split), index]))


def generate_scene(
    seed: int,
    split: str,
    index: int,
    image_size: tuple[int, int] = (112, 144),
    num_objects: tuple[int, int] = (3, 5),
) -> Scene:
    """Draws, describes and renders one scene, deterministically from ``(seed, split, index)``.

    Layouts where objects do not fit, or where some object has no unambiguous expression, are
    redrawn from the same stream, so the result is still a pure function of the arguments.

    Args:
        seed: non-negative base seed.
        split: one of ``SPLITS``.
        index: non-negative scene index within the split.
        image_size: inclusive range ``(min, max)`` from which height and width are drawn independently.
        num_objects: inclusive range ``(min, max)`` of the object count.

    Returns:
        The scene.

    Raises:
        ValueError: for invalid arguments.
        RuntimeError: if no valid scene was found in ``MAX_ATTEMPTS`` attempts (e.g. too many
            objects for the image size).
    """
    if not 8 <= image_size[0] <= image_size[1]:
        raise ValueError(f"image_size must be a range (min, max) with 8 <= min <= max, got {image_size}")
    if not 1 <= num_objects[0] <= num_objects[1]:
        raise ValueError(f"num_objects must be a range (min, max) with 1 <= min <= max, got {num_objects}")
    rng = scene_generator(seed, split, index)
    for _ in range(MAX_ATTEMPTS):
        height, width = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, size=2))
        layout = _layout(rng, height, width, int(rng.integers(num_objects[0], num_objects[1] + 1)))
        if layout is None:
            continue
        masks = np.stack([rasterise(polygon, height, width) for _, _, polygon in layout])
        facts = [_facts(shape, colour, mask) for (shape, colour, _), mask in zip(layout, masks, strict=True)]
        expressions = describe(facts, width, height)
        if all(expressions):
            return _render(rng, layout, masks, facts, expressions)
    raise RuntimeError(
        f"shapes scene {split}/{index} (seed {seed}): no layout of {num_objects} non-overlapping objects "
        f"with an unambiguous expression each in {MAX_ATTEMPTS} attempts at image size {image_size}; "
        "use larger images or fewer objects"
    )
