"""Referring expressions for a shapes scene: every template that singles out exactly one object.

Five kinds of expression, each naming the referent through colour, shape, position or size words:

* ``colour`` ("the red shape", "the red one"): the colour is unique in the scene.
* ``shape`` ("the circle"): the shape is unique in the scene.
* ``colour_shape`` ("the red circle"): the colour+shape combination is unique.
* ``position`` ("the leftmost shape", "the circle on the left", "the top blue shape"): the object is
  extreme on one axis within a group of at least two objects (all of them, or those of its shape,
  colour, or colour+shape), its centre beyond every other centre of the group by a clear margin.
* ``size`` ("the larger blue shape", "the smallest circle"): the object's area is at least
  ``SIZE_RATIO`` times (or at most ``1/SIZE_RATIO`` of) every other area of such a group.

``expression_corpus`` enumerates every string these templates can produce (the tokenizer's corpus).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
KINDS = ("colour", "shape", "colour_shape", "position", "size")

# A position word needs the referent's centre beyond all others of its group by this fraction of
# the image extent on that axis; a size word needs this area ratio against all others.
POSITION_MARGIN = 0.10
SIZE_RATIO = 1.6

COLOUR_TEMPLATES = ("the {colour} shape", "the {colour} one")
SHAPE_TEMPLATES = ("the {shape}",)
COLOUR_SHAPE_TEMPLATES = ("the {colour} {shape}",)
POSITION_TEMPLATES = {
    "left": ("the leftmost {noun}", "the {noun} on the left"),
    "right": ("the rightmost {noun}", "the {noun} on the right"),
    "top": ("the top {noun}", "the {noun} at the top"),
    "bottom": ("the bottom {noun}", "the {noun} at the bottom"),
}
# Keyed by (extreme, comparative): comparatives for a group of two, superlatives for more.
SIZE_TEMPLATES = {
    ("large", True): ("the larger {noun}", "the bigger {noun}"),
    ("large", False): ("the largest {noun}", "the biggest {noun}"),
    ("small", True): ("the smaller {noun}",),
    ("small", False): ("the smallest {noun}",),
}


@dataclass(frozen=True)
class Expression:
    """One referring expression and its kind (one of ``KINDS``)."""

    text: str
    kind: str


@dataclass(frozen=True)
class ObjectFacts:
    """What the expressions may talk about.

    Attributes:
        colour: one of ``COLOURS``.
        shape: one of ``SHAPES``.
        area: mask area in pixels.
        centre: mask centroid ``(x, y)`` in pixels.
    """

    colour: str
    shape: str
    area: int
    centre: tuple[float, float]


def _nouns(target: ObjectFacts) -> list[tuple[str, Callable[[ObjectFacts], bool]]]:
    """The noun phrases that can name ``target``, each with the group of objects it covers."""
    return [
        ("shape", lambda o: True),
        (target.shape, lambda o: o.shape == target.shape),
        (f"{target.colour} shape", lambda o: o.colour == target.colour),
        (f"{target.colour} {target.shape}", lambda o: (o.colour, o.shape) == (target.colour, target.shape)),
    ]


def _directions(target: ObjectFacts, others: list[ObjectFacts], width: int, height: int) -> list[str]:
    """Directions in which ``target`` is extreme among ``others`` by the position margin."""
    (x, y), dx, dy = target.centre, POSITION_MARGIN * width, POSITION_MARGIN * height
    xs = [o.centre[0] for o in others]
    ys = [o.centre[1] for o in others]
    found = []
    if x + dx <= min(xs):
        found.append("left")
    if x - dx >= max(xs):
        found.append("right")
    if y + dy <= min(ys):
        found.append("top")
    if y - dy >= max(ys):
        found.append("bottom")
    return found


def _size_extremes(target: ObjectFacts, others: list[ObjectFacts]) -> list[str]:
    """``"large"`` / ``"small"`` when ``target``'s area beats all ``others`` by the size ratio."""
    areas = [o.area for o in others]
    found = []
    if target.area >= SIZE_RATIO * max(areas):
        found.append("large")
    if target.area * SIZE_RATIO <= min(areas):
        found.append("small")
    return found


def _relational(index: int, objects: Sequence[ObjectFacts], width: int, height: int) -> list[Expression]:
    """Position and size expressions of ``objects[index]`` within each group that contains it."""
    target = objects[index]
    found = []
    for noun, member in _nouns(target):
        others = [o for j, o in enumerate(objects) if j != index and member(o)]
        if not others:  # a relation within a group of one would be vacuous, maybe false
            continue
        for direction in _directions(target, others, width, height):
            found += [Expression(t.format(noun=noun), "position") for t in POSITION_TEMPLATES[direction]]
        for extreme in _size_extremes(target, others):
            templates = SIZE_TEMPLATES[extreme, len(others) == 1]
            found += [Expression(t.format(noun=noun), "size") for t in templates]
    return found


def describe(objects: Sequence[ObjectFacts], width: int, height: int) -> list[list[Expression]]:
    """Every unambiguous expression of every object, in a fixed order (no text repeats).

    Args:
        objects: the scene's objects.
        width: image width in pixels (scales the horizontal position margin).
        height: image height in pixels (scales the vertical position margin).

    Returns:
        One list per object (possibly empty), in the order of ``objects``.
    """
    described = []
    for index, target in enumerate(objects):
        colours = sum(o.colour == target.colour for o in objects)
        shapes = sum(o.shape == target.shape for o in objects)
        pairs = sum((o.colour, o.shape) == (target.colour, target.shape) for o in objects)
        found = []
        if colours == 1:
            found += [Expression(t.format(colour=target.colour), "colour") for t in COLOUR_TEMPLATES]
        if shapes == 1:
            found += [Expression(t.format(shape=target.shape), "shape") for t in SHAPE_TEMPLATES]
        if pairs == 1:
            found += [
                Expression(t.format(colour=target.colour, shape=target.shape), "colour_shape")
                for t in COLOUR_SHAPE_TEMPLATES
            ]
        found += _relational(index, objects, width, height)
        described.append(found)
    return described


def expression_corpus() -> list[str]:
    """Every string ``describe`` can produce, sorted.

    Returns:
        The distinct expressions over all colours, shapes, groups, directions and size words.
    """
    nouns = ["shape", *SHAPES]
    nouns += [f"{c} shape" for c in COLOURS] + [f"{c} {s}" for c in COLOURS for s in SHAPES]
    relational = [t for ts in (*POSITION_TEMPLATES.values(), *SIZE_TEMPLATES.values()) for t in ts]
    texts = {t.format(colour=c) for t in COLOUR_TEMPLATES for c in COLOURS}
    texts |= {t.format(shape=s) for t in SHAPE_TEMPLATES for s in SHAPES}
    texts |= {t.format(colour=c, shape=s) for t in COLOUR_SHAPE_TEMPLATES for c in COLOURS for s in SHAPES}
    texts |= {t.format(noun=n) for t in relational for n in nouns}
    return sorted(texts)
