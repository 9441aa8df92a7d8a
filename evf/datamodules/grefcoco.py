"""gRefCOCO (generalised referring expressions): one expression may name several objects or none.

Layout under ``root`` (as gRefCOCO's ``G_REFER(data_root)``, with the images where RefCOCO keeps them)::

    grefcoco/grefs(unc).json                 the refs (``grefs(unc).p`` is read too, like G_REFER does)
    grefcoco/instances.json                  COCO images, annotations, categories
    images/mscoco/images/train2014/<file>    COCO train2014 (``images/train2014/`` is accepted too)

A gref is a REFER ref whose ``ann_id`` is a list: several ids (multi-target: the union of their
masks) or ``[-1]`` (no target: an empty mask, flagged ``no_target: true``). Splits: train, val, testA,
testB. Expressions are tagged ``single_target`` / ``multi_target`` / ``no_target`` (``Sample.kinds``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evf.datamodules.coco import annotation_mask
from evf.datamodules.common import DataError, OnBadSample, require
from evf.datamodules.refer import COCO_IMAGES, ReferDataset, load_refs

IMAGE_DIR_CANDIDATES = (COCO_IMAGES, "images/train2014")


class GRefCOCODataset(ReferDataset):
    """One gRefCOCO split; see `ReferDataset` for sampling and the module docstring for the format.

    Args:
        root: folder holding ``grefcoco/`` and the images.
        split: ``train``, ``val``, ``testA`` or ``testB``.
        split_by: names the refs file ``grefs(<split_by>).json`` (only ``unc`` is released).
        image_dir: image folder (None = the first of `IMAGE_DIR_CANDIDATES` under ``root`` that exists).
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    refs_file = "grefs({split_by}).json"
    kind_names = ("single_target", "multi_target", "no_target")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        split_by: str = "unc",
        image_dir: str | Path | None = None,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(
            root, "grefcoco", split, split_by, image_dir, seed, max_expressions, augment, on_bad_sample
        )

    def _image_dir(self, root: Path, image_dir: str | Path | None) -> Path:
        if image_dir is not None:
            return Path(image_dir)
        for candidate in IMAGE_DIR_CANDIDATES:
            if (root / candidate).is_dir():
                return root / candidate
        looked = " and ".join(str(root / c) for c in IMAGE_DIR_CANDIDATES)
        raise DataError(f"gRefCOCO image folder not found: looked for {looked}")

    def read_refs(self, path: Path) -> list[dict]:
        pickled = path.with_suffix(".p")
        if not path.is_file() and pickled.is_file():
            return load_refs(pickled)
        try:
            refs = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"gRefCOCO refs file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"gRefCOCO refs file {path} is not valid JSON: {err}") from None
        if not isinstance(refs, list):
            raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
        return refs

    def ann_ids(self, ref: dict, where: str) -> list[int]:
        """The target annotations: several, one, or none (``ann_id: [-1]``)."""
        ids = require(ref, "ann_id", where)
        ids = ids if isinstance(ids, list) else [ids]
        if ids == [-1]:
            return []
        if not ids or -1 in ids:
            raise DataError(f"{where}: ann_id must list target annotations or be [-1] (no target), got {ids}")
        return ids

    def ref_mask(self, ref: dict, height: int, width: int) -> np.ndarray:
        """Union of the targets' masks; empty for a no-target expression."""
        mask = np.zeros((height, width), dtype=bool)
        for ann_id in self.ann_ids(ref, f"{self.name} ref_id={ref.get('ref_id')}"):
            mask |= annotation_mask(self.coco, self.coco.annotations[ann_id], height, width)
        return mask

    def kind(self, ref: dict) -> str:
        count = len(self.ann_ids(ref, f"{self.name} ref_id={ref.get('ref_id')}"))
        return "no_target" if count == 0 else "multi_target" if count > 1 else "single_target"
