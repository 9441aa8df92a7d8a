"""Instances labelled by category, turned into referring expressions: the base of `coco_instances`
and `labelme`.

Each category present in an image is one target: the union of its instances' masks. Its
expressions come from templates filled with the category name (``_`` becomes a space):
``templates`` when the image holds one instance of it, ``plural_templates`` when it holds several
(a crowd region counts as several), or ``"[semantic] <name>"`` alone in semantic mode. With
``negatives: k``, k categories of the dataset that are absent from the image become no-target
expressions (an all-False mask), worded with ``templates`` (``"[semantic] <name>"`` in semantic mode).

Training: up to ``max_expressions`` targets (present and negative together), one template each,
drawn per ``(seed, epoch, index)``; the negatives are drawn per epoch too. Evaluation: every
template of every present category and of k negatives fixed per image. Expressions are tagged
(`Sample.kinds`) ``single_target`` / ``multi_target`` / ``no_target``, as gRefCOCO's; in semantic
mode only negatives are tagged (``no_target``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evf.datamodules.common import NO_TARGET_KIND, FileDataset, OnBadSample, draw, item_rng, semantic_prompt
from evf.datamodules.sample import Sample

DEFAULT_TEMPLATES = ("{name}", "the {name}")
DEFAULT_PLURAL_TEMPLATES = ("{name}", "every {name}")
_NEGATIVE_STREAM = 0x4E6


def clean_name(name: Any) -> str:
    """``"traffic_light"`` -> ``"traffic light"`` (underscores to spaces, runs of spaces to one)."""
    return " ".join(str(name).replace("_", " ").split())


def check_templates(templates: Sequence[str], what: str) -> tuple[str, ...]:
    """The templates as a tuple; a `ValueError` for a template without ``{name}`` or with other fields."""
    if isinstance(templates, str) or not templates:
        raise ValueError(f"{what} must be a non-empty list of strings with {{name}}, got {templates!r}")
    for template in templates:
        try:
            ok = isinstance(template, str) and template.format(name="x") != template
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{what}: {template!r} must contain {{name}} and no other {{field}}")
    return tuple(templates)


@dataclass
class CategoryImage:
    """One image of a category dataset.

    Attributes:
        source: what the subclass needs to read the image (a record, a path).
        image_id: stable identifier, for logs and messages.
        categories: clean category name -> its instances (each what the subclass needs to draw it)
            and how many objects each stands for (a crowd region: 2, i.e. several).
    """

    source: Any
    image_id: str
    categories: dict[str, list[tuple[Any, int]]]


class CategoryDataset(FileDataset):
    """Category-labelled instances as expressions (see the module docstring).

    Subclasses fill ``items`` and ``names`` (every category name of the dataset, for negatives) and
    implement `read_image` and `instance_mask`.

    Args:
        name: dataset and split, for messages.
        templates: expression templates of a category with one instance in the image.
        plural_templates: templates of a category with several instances (the union is the target).
        semantic: ``"[semantic] <name>"`` as the only expression of a present category.
        negatives: absent categories per image that become no-target expressions.
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    kind_names = ("single_target", "multi_target", NO_TARGET_KIND)

    def __init__(
        self,
        name: str,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        plural_templates: Sequence[str] = DEFAULT_PLURAL_TEMPLATES,
        semantic: bool = False,
        negatives: int = 0,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(name, seed, max_expressions, augment, on_bad_sample)
        if negatives < 0:
            raise ValueError(f"negatives must be 0 or more, got {negatives}")
        self.templates = check_templates(templates, "templates")
        self.plural_templates = check_templates(plural_templates, "plural_templates")
        self.semantic = semantic
        self.negatives = negatives
        self.items: list[CategoryImage] = []
        self.names: list[str] = []

    @abstractmethod
    def read_image(self, item: CategoryImage) -> np.ndarray:
        """The uint8 ``[H,W,3]`` image of ``item``, checked against its annotated size."""

    @abstractmethod
    def instance_mask(self, item: CategoryImage, instance: Any, height: int, width: int) -> np.ndarray:
        """The bool mask of one instance; a `DataError` if it is empty or malformed."""

    def void_mask(self, item: CategoryImage, height: int, width: int) -> np.ndarray | None:
        """Bool ``[H,W]`` pixels no expression of ``item`` is judged on (none by default)."""
        return None

    def keeps(self, categories: dict) -> bool:
        """Whether an image with these categories yields any expression."""
        return bool(categories) or (self.negatives > 0 and bool(self.names))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        item = self.items[index]
        absent = [name for name in self.names if name not in item.categories]
        negative_rng = rng or item_rng(self.seed, self._stream, _NEGATIVE_STREAM, index)
        negatives = (
            [absent[i] for i in draw(negative_rng, len(absent), self.negatives)] if self.negatives else []
        )
        targets = [(name, item.categories[name]) for name in sorted(item.categories)]
        targets += [(name, []) for name in negatives]
        if rng is not None:
            targets = [targets[i] for i in draw(rng, len(targets), self.max_expressions)]
        image = self.read_image(item)
        height, width = image.shape[:2]
        texts, masks, kinds = [], [], []
        for name, instances in targets:
            mask = np.zeros((height, width), dtype=bool)
            for instance, _ in instances:
                mask |= self.instance_mask(item, instance, height, width)
            count = sum(n for _, n in instances)
            for text in self._texts(name, count, rng):
                texts.append(text)
                masks.append(mask)
                kinds.append(self._kind(count))
        void = self.void_mask(item, height, width)
        return Sample(image, np.stack(masks), texts, item.image_id, kinds if any(kinds) else [], void)

    def _texts(self, name: str, count: int, rng: np.random.Generator | None) -> list[str]:
        """Every wording of a target (evaluation), or one drawn (training)."""
        if self.semantic:
            return [semantic_prompt(name)]
        templates = self.plural_templates if count > 1 else self.templates
        if rng is not None:
            templates = (templates[int(rng.integers(len(templates)))],)
        return [template.format(name=name) for template in templates]

    def _kind(self, count: int) -> str:
        if count == 0:
            return NO_TARGET_KIND
        if self.semantic:
            return ""
        return "multi_target" if count > 1 else "single_target"
