"""Part segmentation as class-level referring: PartImageNet and PASCAL-Part (VLPart's json).

Both are COCO-style jsons of part instances. All instances of one part category in an image are
merged into one semantic mask with the expression ``"[semantic] <part>"``: up to
``max_expressions`` categories drawn per ``(seed, epoch, index)`` in training, every category in
evaluation.

PartImageNet (names like ``Quadruped Head`` -> ``quadruped head``; category ids start at 0)::

    images/<split>/<file_name>
    annotations/<split>/<split>.json

PASCAL-Part as VLPart distributes it (names like ``person:hair`` -> ``person hair``)::

    VOCdevkit/VOC2010/JPEGImages/<file_name>
    train.json, val.json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from evf.datamodules.coco import annotation_mask, image_size, index_coco, load_json
from evf.datamodules.common import (
    FileDataset,
    OnBadSample,
    draw,
    read_image,
    require,
    require_dir,
    semantic_prompt,
)
from evf.datamodules.sample import Sample


def partimagenet_part(name: str) -> str:
    """``"Quadruped Head"`` -> ``"quadruped head"``."""
    return " ".join(name.lower().split())


def pascal_part(name: str) -> str:
    """``"person:hair"`` -> ``"person hair"``."""
    return " ".join(name.replace(":", " ").split())


class CocoPartsDataset(FileDataset):
    """Part instances of a COCO-style json, merged per category into ``[semantic]`` masks.

    Args:
        name: dataset and split, for messages.
        annotations: the json file.
        image_dir: folder the images' ``file_name`` entries are relative to.
        part_name: category name -> the part words of the expression.
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        name: str,
        annotations: Path,
        image_dir: Path,
        part_name: Callable[[str], str],
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(name, seed, max_expressions, augment, on_bad_sample)
        self.image_dir = require_dir(image_dir, f"{name} image folder")
        self.coco = index_coco(load_json(annotations, f"{name} annotations"), annotations, self._bad)
        self.part_name = part_name
        self.items: list[tuple[dict, list[tuple[int, list[dict]]]]] = []
        for image_id in sorted(self.coco.by_image):
            groups: dict[int, list[dict]] = {}
            for ann in self.coco.by_image[image_id]:
                groups.setdefault(ann["category_id"], []).append(ann)
            self.items.append((self.coco.images[image_id], sorted(groups.items())))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        image, groups = self.items[index]
        chosen = groups if rng is None else [groups[i] for i in draw(rng, len(groups), self.max_expressions)]
        height, width = image_size(self.coco, image)
        masks = [
            np.logical_or.reduce([annotation_mask(self.coco, a, height, width) for a in anns])
            for _, anns in chosen
        ]
        texts = [
            semantic_prompt(
                self.part_name(
                    str(require(self.coco.categories[c], "name", self.coco.where("categories", c)))
                )
            )
            for c, _ in chosen
        ]
        where = self.coco.where("images", image["id"])
        file_name = require(image, "file_name", where)
        return Sample(
            image=read_image(self.image_dir / file_name, (height, width), where),
            masks=np.stack(masks),
            texts=texts,
            image_id=f"{self.name}/{file_name}",
        )


class PartImageNetDataset(CocoPartsDataset):
    """PartImageNet (40 part categories of 11 super-categories).

    Args:
        root: the ``PartImageNet`` folder.
        split: ``train``, ``val`` or ``test``.
        annotations: the json (None = ``annotations/<split>/<split>.json``; relative to ``root``).
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str | Path | None = None,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        root = Path(root)
        path = root / (annotations or f"annotations/{split}/{split}.json")
        super().__init__(
            f"partimagenet/{split}", path, root / "images" / split, partimagenet_part,
            seed, max_expressions, augment, on_bad_sample,
        )  # fmt: skip


class PascalPartDataset(CocoPartsDataset):
    """PASCAL-Part in VLPart's COCO-style jsons (93 ``object:part`` categories).

    Args:
        root: the ``pascal_part`` folder.
        split: ``train`` or ``val``.
        annotations: the json (None = ``<split>.json``; relative to ``root``).
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str | Path | None = None,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        root = Path(root)
        path = root / (annotations or f"{split}.json")
        super().__init__(
            f"pascal_part/{split}", path, root / "VOCdevkit" / "VOC2010" / "JPEGImages",
            pascal_part, seed, max_expressions, augment, on_bad_sample,
        )  # fmt: skip
