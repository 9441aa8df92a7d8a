"""``ShapesDataset``: synthetic referring segmentation scenes as ``Sample`` records."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..base import EVFDataset
from ..sample import Sample
from .expressions import KINDS, Expression, ObjectFacts
from .generalized import (
    MULTI_TARGET_KINDS,
    NO_TARGET_KINDS,
    GroupExpression,
    multi_target_expressions,
    no_target_expressions,
)
from .scene import SPLITS, Scene, generate_scene

_PICK_STREAM = 0x91C4  # keeps the expression picks apart from other streams drawn from the same seed
_GENERALIZED_STREAM = 0x6E7A  # no-target / multi-target draws: the single-target picks stay as they were


def _pick_expression(rng: np.random.Generator, expressions: tuple[Expression, ...]) -> Expression:
    """A kind drawn uniformly among those present, then an expression of that kind."""
    kinds = sorted({e.kind for e in expressions})
    kind = kinds[rng.integers(len(kinds))]
    of_kind = [e for e in expressions if e.kind == kind]
    return of_kind[rng.integers(len(of_kind))]


def _pick_group(rng: np.random.Generator, groups: list[GroupExpression]) -> GroupExpression:
    """As `_pick_expression`, for no-target / multi-target expressions."""
    kinds = sorted({g.expression.kind for g in groups})
    kind = kinds[rng.integers(len(kinds))]
    of_kind = [g for g in groups if g.expression.kind == kind]
    return of_kind[rng.integers(len(of_kind))]


class ShapesDataset(EVFDataset):
    """Synthetic scenes of coloured circles, squares and triangles with referring expressions.

    The scene of item ``idx`` is a pure function of ``(seed, split, idx)``. In training
    (``max_expressions`` set) an item holds up to ``max_expressions`` distinct objects with one
    expression each, picked by a generator seeded from ``(seed, epoch, idx)``. The kind of each
    expression is drawn uniformly among the object's kinds first, since position phrases outnumber
    the others about 4 to 1 and would otherwise dominate training. With ``max_expressions=None``
    (validation, test) an item holds every expression of every object.

    ``dataset[idx]`` uses the epoch of ``set_epoch``; ``dataset[epoch, idx]`` and
    ``sample(idx, epoch)`` name it explicitly (the ``EVFDataset`` contract).

    Generalized referring (`evf.datamodules.shapes.generalized`): with ``no_target_rate`` /
    ``multi_target_rate``, each training expression is, with that probability, replaced by one
    that names nothing in the scene (empty mask) or several objects (the union of their masks);
    validation and test items add such expressions in the same proportions to every single-target
    one. Both rates 0 (the default) give exactly the single-target dataset.

    Args:
        split: which split; splits never share scenes.
        num_images: number of scenes.
        seed: non-negative base seed.
        max_expressions: objects (one expression each) per item, or ``None`` for all expressions.
        image_size: inclusive range ``(min, max)`` from which height and width are drawn.
        num_objects: inclusive range ``(min, max)`` of objects per scene.
        no_target_rate: share of no-target expressions.
        multi_target_rate: share of multi-target expressions.
    """

    def __init__(
        self,
        split: Literal["train", "val", "test"],
        num_images: int,
        seed: int = 0,
        max_expressions: int | None = 3,
        image_size: tuple[int, int] = (112, 144),
        num_objects: tuple[int, int] = (3, 5),
        no_target_rate: float = 0.0,
        multi_target_rate: float = 0.0,
    ) -> None:
        if not (0 <= no_target_rate and 0 <= multi_target_rate and no_target_rate + multi_target_rate < 1):
            raise ValueError(
                "no_target_rate and multi_target_rate must be non-negative with a sum below 1, got "
                f"{no_target_rate} and {multi_target_rate}"
            )
        if split not in SPLITS:
            raise ValueError(f"unknown shapes split {split!r}; expected one of {SPLITS}")
        if num_images < 0 or seed < 0:
            raise ValueError(f"num_images and seed must be non-negative, got {num_images} and {seed}")
        if max_expressions is not None and max_expressions < 1:
            raise ValueError(f"max_expressions must be None or at least 1, got {max_expressions}")
        self.split = split
        self.num_images = num_images
        self.seed = seed
        self.max_expressions = max_expressions
        self.image_size = tuple(image_size)
        self.num_objects = tuple(num_objects)
        self.rates = {"no_target": no_target_rate, "multi_target": multi_target_rate}
        self.kind_names = KINDS + (NO_TARGET_KINDS if no_target_rate else ())
        self.kind_names += MULTI_TARGET_KINDS if multi_target_rate else ()
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_images

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose expression picks ``dataset[idx]`` returns."""
        self.epoch = epoch

    def image_id(self, idx: int) -> str:
        """Stable identifier of scene ``idx``, e.g. ``shapes-train-s0-000042``."""
        return f"shapes-{self.split}-s{self.seed}-{idx:06d}"

    def image_key(self, index: int) -> str:
        """`image_id` plus the scene parameters that also decide the picture (no rendering)."""
        (h0, h1), (o0, o1) = self.image_size, self.num_objects
        return f"{self.image_id(index)}-px{h0}-{h1}-obj{o0}-{o1}"

    def load_image(self, index: int) -> np.ndarray:
        """The rendered scene, without drawing expressions."""
        return self.scene(index).image

    def scene(self, idx: int) -> Scene:
        """The full scene record of item ``idx`` (objects with polygons, boxes and all expressions)."""
        if not 0 <= idx < self.num_images:
            raise IndexError(f"shapes {self.split} index {idx} out of range for {self.num_images} images")
        return generate_scene(self.seed, self.split, idx, self.image_size, self.num_objects)

    def sample(self, index: int, epoch: int) -> Sample:
        """The item at ``index`` with the expression picks of ``epoch``."""
        scene = self.scene(index)
        if self.max_expressions is None:
            chosen = [
                GroupExpression(e, (i,)) for i, obj in enumerate(scene.objects) for e in obj.expressions
            ]
        else:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _PICK_STREAM, epoch, index]))
            count = min(self.max_expressions, len(scene.objects))
            picked = (int(i) for i in rng.choice(len(scene.objects), size=count, replace=False))
            chosen = [
                GroupExpression(_pick_expression(rng, scene.objects[i].expressions), (i,)) for i in picked
            ]
        if any(self.rates.values()):
            chosen = self._generalize(scene, chosen, index, epoch)
        masks = np.zeros((len(chosen), *scene.image.shape[:2]), dtype=bool)
        for row, group in enumerate(chosen):
            masks[row] = scene.masks[list(group.targets)].any(0)
        return Sample(
            image=scene.image,
            masks=masks,
            texts=[g.expression.text for g in chosen],
            image_id=self.image_id(index),
            kinds=[g.expression.kind for g in chosen],
        )

    def _generalize(
        self, scene: Scene, chosen: list[GroupExpression], index: int, epoch: int
    ) -> list[GroupExpression]:
        """Training: replace each expression, at the configured rates, by a no-target or a
        multi-target one. Evaluation: add such expressions in the same proportions."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _GENERALIZED_STREAM, epoch, index]))
        facts = [ObjectFacts(o.colour, o.shape, o.area, o.centre) for o in scene.objects]
        height, width = scene.image.shape[:2]
        pools = {
            "no_target": no_target_expressions(facts, width, height),
            "multi_target": multi_target_expressions(facts),
        }
        if self.max_expressions is not None:
            out = []
            for group in chosen:
                draw, bound = rng.random(), 0.0
                for name, rate in self.rates.items():
                    bound += rate
                    if draw < bound:
                        group = _pick_group(rng, pools[name]) if pools[name] else group
                        break
                out.append(group)
            return out
        single = 1 - sum(self.rates.values())
        extra = []
        for name, rate in self.rates.items():
            count = min(round(len(chosen) * rate / single), len(pools[name]))
            extra += [pools[name][int(i)] for i in sorted(rng.choice(len(pools[name]), count, replace=False))]
        return chosen + extra

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        return self.sample(index, epoch)
