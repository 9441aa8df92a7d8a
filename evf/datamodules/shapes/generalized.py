"""Generalized referring expressions for a shapes scene: ones that name nothing, and ones that name
several objects (gRefCOCO's no-target and multi-target expressions).

No-target kinds, each naming something the scene does not have:

* ``absent_colour`` ("the purple shape", "the green one"): no object has that colour (palette
  colours missing from the scene, and colours never drawn).
* ``absent_shape`` ("the triangle", "the star"): no object has that shape.
* ``absent_colour_shape`` ("the red square"): the colour and the shape both occur, never together.
* ``absent_relation`` ("the circle on the left"): the only object of a group lies in the opposite
  third of the image, so nothing of that group is on that side.

Multi-target kinds, each naming every object of a group of at least two (the target is the union
of their masks, as gRefCOCO defines it):

* ``multi_shape`` ("all the circles", "the two squares", "both triangles").
* ``multi_colour`` ("the red shapes", "the blue ones").
* ``multi_colour_shape`` ("the red circles").
* ``multi_all`` ("all the shapes", "every shape").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .expressions import COLOURS, SHAPES, Expression, ObjectFacts

NO_TARGET_KINDS = ("absent_colour", "absent_shape", "absent_colour_shape", "absent_relation")
MULTI_TARGET_KINDS = ("multi_shape", "multi_colour", "multi_colour_shape", "multi_all")

# Words no scene ever draws: absent in every scene.
UNSEEN_COLOURS = ("purple", "orange")
UNSEEN_SHAPES = ("star", "hexagon")
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}

# "the circle on the left" names nothing when the only circle's centre is in the far third.
ABSENT_SIDE = {
    "left": (0, 2 / 3, "the {noun} on the left"),
    "right": (0, -1 / 3, "the {noun} on the right"),
    "top": (1, 2 / 3, "the {noun} at the top"),
    "bottom": (1, -1 / 3, "the {noun} at the bottom"),
}


@dataclass(frozen=True)
class GroupExpression:
    """An expression and the objects it names: none (no target) or several (multi-target)."""

    expression: Expression
    targets: tuple[int, ...]


def no_target_expressions(objects: Sequence[ObjectFacts], width: int, height: int) -> list[GroupExpression]:
    """Every no-target expression of a scene, in a fixed order."""
    colours = {o.colour for o in objects}
    shapes = {o.shape for o in objects}
    pairs = {(o.colour, o.shape) for o in objects}
    found = []
    for colour in (*[c for c in COLOURS if c not in colours], *UNSEEN_COLOURS):
        texts = (f"the {colour} shape", f"the {colour} one")
        found += [GroupExpression(Expression(t, "absent_colour"), ()) for t in texts]
    for shape in (*[s for s in SHAPES if s not in shapes], *UNSEEN_SHAPES):
        found.append(GroupExpression(Expression(f"the {shape}", "absent_shape"), ()))
    for colour in sorted(colours):
        for shape in sorted(shapes):
            if (colour, shape) not in pairs:
                expression = Expression(f"the {colour} {shape}", "absent_colour_shape")
                found.append(GroupExpression(expression, ()))
    found += _absent_relations(objects, width, height)
    return found


def _absent_relations(objects: Sequence[ObjectFacts], width: int, height: int) -> list[GroupExpression]:
    found = []
    for target in objects:
        nouns = {
            target.shape: [o.shape == target.shape for o in objects],
            f"{target.colour} shape": [o.colour == target.colour for o in objects],
            f"{target.colour} {target.shape}": [
                (o.colour, o.shape) == (target.colour, target.shape) for o in objects
            ],
        }
        for noun, members in nouns.items():
            if sum(members) != 1:  # the target is the group's only object
                continue
            for axis, bound, template in ABSENT_SIDE.values():
                extent = width if axis == 0 else height
                position = target.centre[axis] / extent
                beyond = position >= bound if bound > 0 else position <= -bound
                if beyond:
                    expression = Expression(template.format(noun=noun), "absent_relation")
                    found.append(GroupExpression(expression, ()))
    return found


def multi_target_expressions(objects: Sequence[ObjectFacts]) -> list[GroupExpression]:
    """Every multi-target expression of a scene (groups of two or more), in a fixed order."""
    found = []

    def group(kind: str, members: tuple[int, ...], plural: str, ones: str | None = None) -> None:
        count = len(members)
        if count < 2:
            return
        texts = [f"all the {plural}", f"the {plural}"]
        if ones is not None:
            texts.append(ones)
        if count == 2:
            texts.append(f"both {plural}")
        if count in NUMBERS:
            texts.append(f"the {NUMBERS[count]} {plural}")
        found.extend(GroupExpression(Expression(t, kind), members) for t in texts)

    for shape in SHAPES:
        group("multi_shape", _members([o.shape == shape for o in objects]), f"{shape}s")
    for colour in COLOURS:
        members = _members([o.colour == colour for o in objects])
        group("multi_colour", members, f"{colour} shapes", ones=f"the {colour} ones")
    for colour in COLOURS:
        for shape in SHAPES:
            members = _members([(o.colour, o.shape) == (colour, shape) for o in objects])
            group("multi_colour_shape", members, f"{colour} {shape}s")
    if len(objects) >= 2:
        everything = tuple(range(len(objects)))
        texts = ("all the shapes", "every shape", "all of them")
        found += [GroupExpression(Expression(t, "multi_all"), everything) for t in texts]
    return found


def _members(flags: Sequence[bool]) -> tuple[int, ...]:
    return tuple(i for i, flag in enumerate(flags) if flag)
