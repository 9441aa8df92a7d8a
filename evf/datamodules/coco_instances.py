"""``coco_instances``: a COCO ``instances.json`` and its image folder, categories as expressions.

Layout under ``root`` (COCO's own; both paths are options, ``{split}`` is replaced by the split)::

    annotations/instances_<split>.json      images, annotations (polygons or RLE), categories
    <split>/<file_name>                     the images

Each category present in an image becomes expressions from templates (`evf.datamodules.categories`).
Images without annotations are left out, unless ``negatives`` gives them no-target expressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evf.datamodules.categories import (
    DEFAULT_PLURAL_TEMPLATES,
    DEFAULT_TEMPLATES,
    CategoryDataset,
    CategoryImage,
    clean_name,
)
from evf.datamodules.coco import annotation_mask, image_size, index_coco, load_json
from evf.datamodules.common import DataError, OnBadSample, read_image, require, require_dir


class CocoInstancesDataset(CategoryDataset):
    """A COCO instances file as referring expressions (see the module docstring).

    Args:
        root: the dataset folder.
        split: names the files through ``{split}`` in ``annotations`` and ``image_dir``.
        annotations: the json, relative to ``root``.
        image_dir: the folder ``file_name`` is relative to, relative to ``root``.
        templates, plural_templates, semantic, negatives: see `CategoryDataset`.
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str = "annotations/instances_{split}.json",
        image_dir: str = "{split}",
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        plural_templates: Sequence[str] = DEFAULT_PLURAL_TEMPLATES,
        semantic: bool = False,
        negatives: int = 0,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(
            f"coco_instances/{split}", templates, plural_templates, semantic, negatives,
            seed, max_expressions, augment, on_bad_sample,
        )  # fmt: skip
        root = Path(root)
        path = root / annotations.format(split=split)
        self.image_dir = require_dir(root / image_dir.format(split=split), "COCO image folder")
        self.coco = index_coco(load_json(path, "COCO instances file"), path, self._bad)
        names = {}
        for category_id, category in self.coco.categories.items():
            where = self.coco.where("categories", category_id)
            names[category_id] = clean_name(require(category, "name", where))
            if not names[category_id]:
                raise DataError(f"{where}: empty category name")
        self.names = sorted(set(names.values()))
        for image_id in sorted(self.coco.images):
            categories: dict[str, list[tuple[Any, int]]] = {}
            for ann in self.coco.by_image.get(image_id, []):
                count = 2 if ann.get("iscrowd") else 1
                categories.setdefault(names[ann["category_id"]], []).append((ann, count))
            if self.keeps(categories):
                image = self.coco.images[image_id]
                file_name = image.get("file_name", f"id={image_id}")
                self.items.append(CategoryImage(image, f"{self.name}/{file_name}", categories))

    def read_image(self, item: CategoryImage) -> np.ndarray:
        image = item.source
        where = self.coco.where("images", image["id"])
        file_name = require(image, "file_name", where)
        return read_image(self.image_dir / file_name, image_size(self.coco, image), where)

    def instance_mask(self, item: CategoryImage, instance: Any, height: int, width: int) -> np.ndarray:
        return annotation_mask(self.coco, instance, height, width)
