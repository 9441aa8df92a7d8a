"""Captions of shapes scenes: sentences that describe the whole scene, for pretraining an encoder.

A referring expression singles out one object; a caption says what is in the picture: every object
with its colour, shape, rough size and place on a 3 x 3 grid ("a big red circle in the top left"),
and relations between pairs ("a blue square is left of a green triangle", "a yellow circle is
bigger than a red square"), in varied wording and order. Relations use indefinite articles, so a
caption is true whatever else the scene holds; nothing in it says which object an expression of
the task would mean, and no template of `expressions` is used.

The words are those the shipped shapes tokenizer reads without an unknown piece (no ``v``, ``x``,
``k``, ``j`` or ``z`` in any word), so the tiny encoders pretrain on the vocabulary they fine-tune on.
A caption is a pure function of the scene and a generator, so pretraining stays seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .expressions import COLOURS, SHAPES
from .scene import ShapeObject

SIZE_WORDS = {"big": ("big", "large"), "small": ("small", "little"), "medium": ("", "")}
COLUMNS = ("left", "middle", "right")
ROWS = ("top", "middle", "bottom")
# Area of an object relative to the scene's median area that earns a size word.
BIG, SMALL = 1.35, 1 / 1.35
# Relations need a clear gap: centres apart by this fraction of the image extent, areas by this ratio.
RELATION_MARGIN, RELATION_SIZE_RATIO = 0.12, 1.5

CAPTION_WORDS: tuple[str, ...] = tuple(
    sorted(
        {
            *COLOURS, *SHAPES, *COLUMNS, *ROWS, "big", "large", "small", "little", "a", "and",
            "the", "there", "is", "are", "in", "at", "of", "on", "to", "than", "side", "corner",
            "centre", "picture", "image", "shows", "below", "under", "higher", "lower",
            "bigger", "smaller", "shape", "shapes", "one", "two", "three", "four", "we", "see", "sits",
            "near", "upper", "part",
        }
    )
)  # fmt: skip
"""Every word a caption can contain."""


def place(obj: ShapeObject, width: int, height: int) -> tuple[str, str]:
    """The object's cell on a 3 x 3 grid: ``(row, column)`` words."""
    x, y = obj.centre
    return ROWS[min(int(3 * y / height), 2)], COLUMNS[min(int(3 * x / width), 2)]


def size_class(obj: ShapeObject, objects: Sequence[ShapeObject]) -> str:
    """``big`` / ``small`` against the median area of the scene's ``objects``, else ``medium`` (no word)."""
    median = float(np.median([o.area for o in objects]))
    return "big" if obj.area >= BIG * median else "small" if obj.area <= SMALL * median else "medium"


def _place_phrase(rng: np.random.Generator, row: str, column: str) -> str:
    if row == column == "middle":
        return str(rng.choice(["in the centre", "in the middle", "at the centre"]))
    if row == "middle":
        return str(rng.choice([f"on the {column}", f"on the {column} side", f"at the {column}"]))
    if column == "middle":
        word = "upper" if row == "top" and rng.random() < 0.3 else row
        return str(rng.choice([f"at the {word}", f"in the {word} part", f"near the {word}"]))
    return str(
        rng.choice([f"in the {row} {column}", f"in the {row} {column} corner", f"at the {row} {column}"])
    )


def _noun_phrase(rng: np.random.Generator, obj: ShapeObject, objects: Sequence[ShapeObject]) -> str:
    size = SIZE_WORDS[size_class(obj, objects)][int(rng.integers(2))]
    words = ["a", size, obj.colour, obj.shape] if size else ["a", obj.colour, obj.shape]
    return " ".join(words)


def _object_sentence(
    rng: np.random.Generator, obj: ShapeObject, objects: Sequence[ShapeObject], width: int, height: int
) -> str:
    where = _place_phrase(rng, *place(obj, width, height))
    noun = _noun_phrase(rng, obj, objects)
    form = int(rng.integers(4))
    if form == 0:
        return f"there is {noun} {where}"
    if form == 1:
        return f"{noun} sits {where}"
    if form == 2:
        return f"{where} there is {noun}"
    return f"we see {noun} {where}"


def _relations(objects: Sequence[ShapeObject], width: int, height: int) -> list[tuple[int, str, int]]:
    """Every clear relation ``(i, relation, j)`` between two of ``objects``."""
    found = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            if b.centre[0] - a.centre[0] >= RELATION_MARGIN * width:
                found.append((i, "left", j))
            if b.centre[1] - a.centre[1] >= RELATION_MARGIN * height:
                found.append((i, "higher", j))
            if a.area >= RELATION_SIZE_RATIO * b.area:
                found.append((i, "bigger", j))
    return found


def _relation_sentence(
    rng: np.random.Generator, objects: Sequence[ShapeObject], relation: tuple[int, str, int]
) -> str:
    i, kind, j = relation
    a, b = objects[i], objects[j]
    if rng.random() < 0.5:  # say it the other way round
        a, b = b, a
        kind = {"left": "right", "higher": "lower", "bigger": "smaller"}[kind]
    first, second = f"a {a.colour} {a.shape}", f"a {b.colour} {b.shape}"
    if kind in ("left", "right"):
        verb = str(rng.choice([f"is {kind} of", f"is to the {kind} of", f"is on the {kind} of"]))
    elif kind == "higher":
        verb = "is higher than"
    elif kind == "lower":
        verb = str(rng.choice(["is lower than", "is below", "is under"]))
    else:
        verb = f"is {kind} than"
    return f"{first} {verb} {second}"


def _count_sentence(rng: np.random.Generator, objects: Sequence[ShapeObject]) -> str:
    words = ("one", "two", "three", "four")
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    count = sum(o.colour == colour for o in objects)
    if count == 0 or count > len(words):
        n = len(objects)
        return f"the picture shows {words[n - 1]} shapes" if n <= len(words) else "the picture shows shapes"
    noun = "shape" if count == 1 else "shapes"
    return f"the image shows {words[count - 1]} {colour} {noun}"


def caption_scene(
    objects: Sequence[ShapeObject], width: int, height: int, rng: np.random.Generator, max_sentences: int = 3
) -> str:
    """One caption of a scene of ``objects`` in a ``width`` x ``height`` image: 1–``max_sentences``
    sentences joined by "and".

    Object sentences (every object is as likely to be described), relations between pairs, and now
    and then a count of one colour; drawn from ``rng``.
    """
    relations = _relations(objects, width, height)
    sentences = []
    for _ in range(int(rng.integers(1, max_sentences + 1))):
        roll = rng.random()
        if roll < 0.55 or not relations:
            obj = objects[int(rng.integers(len(objects)))]
            sentences.append(_object_sentence(rng, obj, objects, width, height))
        elif roll < 0.92:
            sentences.append(_relation_sentence(rng, objects, relations[int(rng.integers(len(relations)))]))
        else:
            sentences.append(_count_sentence(rng, objects))
    return " and ".join(sentences)


def probe_sentence(obj: ShapeObject, width: int, height: int) -> str:
    """ "there is a {colour} {shape} {place}": the fixed wording of the masked-word probes."""
    row, column = place(obj, width, height)
    where = (
        "in the centre"
        if row == column == "middle"
        else (
            f"on the {column}"
            if row == "middle"
            else f"at the {row}"
            if column == "middle"
            else f"in the {row} {column}"
        )
    )
    return f"there is a {obj.colour} {obj.shape} {where}"


__all__ = ["CAPTION_WORDS", "caption_scene", "place", "probe_sentence", "size_class"]
