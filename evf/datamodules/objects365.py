"""Objects365 as object-level referring data: a category name names its only instance.

Objects365 has boxes, not masks. ``evf annotate-objects365`` (`evf.tools.annotate_objects365`)
prompts SAM with each ground-truth box and writes the masks as RLE into a copy of the COCO-style
json; this dataset reads that file. Per image only categories with exactly one instance are kept
(the paper's filter against ambiguity: "person" in a crowd names no single object), crowd boxes
are dropped, and the expression is the lower-cased category name.

Layout::

    <root>/<split>/<file_name>        images (Objects365 v1: train/obj365_train_*.jpg)
    <annotations>                     the json written by ``evf annotate-objects365``
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from evf.datamodules.coco import annotation_mask, image_size, index_coco, load_json
from evf.datamodules.common import DataError, FileDataset, OnBadSample, draw, read_image, require, require_dir
from evf.datamodules.sample import Sample

log = logging.getLogger(__name__)


def unique_annotations(annotations: list[dict]) -> list[dict]:
    """The non-crowd annotations whose category occurs exactly once among ``annotations``."""
    counts = Counter(ann["category_id"] for ann in annotations)
    return [ann for ann in annotations if counts[ann["category_id"]] == 1 and not ann.get("iscrowd", 0)]


class Objects365Dataset(FileDataset):
    """Objects365 images with SAM masks of their single-instance categories.

    Args:
        root: Objects365 folder (images under ``<root>/<split>/`` unless ``image_dir`` is set).
        split: ``train`` or ``val`` (names the image folder and the split in messages).
        annotations: the json written by ``evf annotate-objects365`` (relative paths are taken
            from ``root``).
        image_dir: folder the json's ``file_name`` entries are relative to (None = ``<root>/<split>``).
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str | Path | None = None,
        image_dir: str | Path | None = None,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(f"objects365/{split}", seed, max_expressions, augment, on_bad_sample)
        if annotations is None:
            raise DataError("objects365: set `annotations` to the json written by `evf annotate-objects365`")
        root = Path(root)
        path = root / annotations
        self.image_dir = require_dir(
            Path(image_dir) if image_dir is not None else root / split, "Objects365 image folder"
        )
        self.coco = index_coco(load_json(path, "Objects365 annotations"), path, self._bad)
        self.items = []
        for image_id in sorted(self.coco.by_image):
            unique = unique_annotations(self.coco.by_image[image_id])
            if unique:
                self.items.append((self.coco.images[image_id], unique))
        log.info(
            "%s: %d of %d images have a category with exactly one instance",
            self.name,
            len(self.items),
            len(self.coco.images),
        )
        if not self.items:
            raise DataError(f"{path}: no image has a category with exactly one instance")
        # The kept items hold all that is read from now on; Objects365's index is large and every
        # DataLoader worker inherits this object, so the rest is dropped.
        self.coco.images.clear()
        self.coco.annotations.clear()
        self.coco.by_image.clear()

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        image, anns = self.items[index]
        chosen = anns if rng is None else [anns[i] for i in draw(rng, len(anns), self.max_expressions)]
        height, width = image_size(self.coco, image)
        for ann in chosen:
            if "segmentation" not in ann:
                raise DataError(
                    f"{self.coco.where('annotations', ann['id'])}: no segmentation; masks come from "
                    "`evf annotate-objects365`: run it on this file and train on its output"
                )
        where = self.coco.where("images", image["id"])
        file_name = require(image, "file_name", where)
        names = [
            str(
                require(
                    self.coco.categories[a["category_id"]],
                    "name",
                    self.coco.where("categories", a["category_id"]),
                )
            )
            for a in chosen
        ]
        return Sample(
            image=read_image(self.image_dir / file_name, (height, width), where),
            masks=np.stack([annotation_mask(self.coco, ann, height, width) for ann in chosen]),
            texts=[name.strip().lower() for name in names],
            image_id=f"objects365/{file_name}",
        )
