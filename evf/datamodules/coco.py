"""COCO-style annotation files: loading, indexing with checks, and mask decoding (pycocotools).

Used by the REFER family (``instances.json``), Objects365, PartImageNet and PASCAL-Part. A
segmentation is a list of polygons (flat ``[x0, y0, x1, y1, ...]`` lists), one RLE (``counts`` as
a compressed string or an uncompressed list, ``size`` = ``[height, width]``) or a list of RLEs;
the parts of one object are merged (union).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from evf.datamodules.common import DataError, require

POLYGON_SLACK = (1.0, 0.01)
"""How far a polygon vertex may lie beyond the image border: the larger of 1 pixel and 1% of that
side (tools snap vertices onto the border, some a hair beyond it; released datasets have a few such
vertices). Beyond that it is a sign of the wrong image, or scaled or swapped coordinates."""


def load_json(path: Path, what: str) -> Any:
    """The parsed JSON file, or a `DataError` naming ``what`` and the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{what} {path} is not valid JSON: {err}") from None


@dataclass
class CocoIndex:
    """Images, categories and annotations by id, annotations grouped by image (in file order)."""

    path: Path
    images: dict[int, dict] = field(default_factory=dict)
    categories: dict[int, dict] = field(default_factory=dict)
    annotations: dict[int, dict] = field(default_factory=dict)
    by_image: dict[int, list[dict]] = field(default_factory=dict)

    def where(self, kind: str, record_id: int) -> str:
        """``"<file> annotations[id=7]"``: where a record lives, for messages."""
        return f"{self.path} {kind}[id={record_id}]"


def index_coco(data: Any, path: Path, bad: Callable[[str], None]) -> CocoIndex:
    """Indexes a COCO-style dict; an annotation pointing at an unknown image or category is
    reported through ``bad`` (which raises or logs) and left out.

    Raises:
        DataError: a top-level list or a record id is missing.
    """
    index = CocoIndex(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    for image in require(data, "images", str(path)):
        index.images[require(image, "id", f"{path} images[]")] = image
    for category in require(data, "categories", str(path)):
        index.categories[require(category, "id", f"{path} categories[]")] = category
    for ann in require(data, "annotations", str(path)):
        ann_id = require(ann, "id", f"{path} annotations[]")
        where = index.where("annotations", ann_id)
        image_id, category_id = require(ann, "image_id", where), require(ann, "category_id", where)
        if image_id not in index.images:
            bad(f"{where}: image_id {image_id} is not in images")
        elif category_id not in index.categories:
            bad(f"{where}: category_id {category_id} is not in categories")
        else:
            index.annotations[ann_id] = ann
            index.by_image.setdefault(image_id, []).append(ann)
    return index


def _rle(part: dict, height: int, width: int, where: str) -> dict:
    size, counts = require(part, "size", where), require(part, "counts", where)
    if list(size) != [height, width]:
        raise DataError(f"{where}: RLE size {list(size)} differs from the image size [{height}, {width}]")
    if isinstance(counts, list):
        return mask_utils.frPyObjects(part, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise DataError(f"{where}: RLE counts must be a string or a list, got {type(counts).__name__}")
    return {"size": [height, width], "counts": counts}


def check_inside(points: np.ndarray, height: int, width: int, where: str) -> None:
    """A `DataError` if a vertex ``(x, y)`` of ``points`` ``[n,2]`` lies outside the image by more
    than `POLYGON_SLACK` (a sign of the wrong image, scaled or swapped coordinates)."""
    pixels, share = POLYGON_SLACK
    dx, dy = max(pixels, share * width), max(pixels, share * height)
    x, y = points[:, 0], points[:, 1]
    outside = (x < -dx) | (x > width + dx) | (y < -dy) | (y > height + dy)
    if outside.any():
        x, y = (float(v) for v in points[np.flatnonzero(outside)[0]])
        raise DataError(
            f"{where}: polygon point ({x:g}, {y:g}) lies outside the {height}x{width} image (height x width)"
        )


def _polygon(part: list, height: int, width: int, where: str) -> dict | None:
    if not all(isinstance(v, Real) for v in part):
        raise DataError(f"{where}: a polygon must be a flat list of numbers")
    if len(part) % 2:
        raise DataError(f"{where}: a polygon has an odd number ({len(part)}) of coordinates")
    check_inside(np.asarray(part, dtype=np.float64).reshape(-1, 2), height, width, where)
    if len(part) < 6:  # fewer than 3 points enclose nothing
        return None
    return mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in part]], height, width))


def decode_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or a list of RLEs) as one bool ``[H,W]`` mask (union).

    Raises:
        DataError: malformed segmentation, naming ``where``.
    """
    parts = [segmentation] if isinstance(segmentation, dict) else segmentation
    if not isinstance(parts, list):
        raise DataError(f"{where}: segmentation is a {type(segmentation).__name__}, expected polygons or RLE")
    mask = np.zeros((height, width), dtype=bool)
    for part in parts:
        if isinstance(part, dict):
            rle = _rle(part, height, width, where)
        elif isinstance(part, list):
            rle = _polygon(part, height, width, where)
        else:
            raise DataError(
                f"{where}: segmentation part is a {type(part).__name__}, expected a polygon or RLE"
            )
        if rle is None:
            continue
        try:
            mask |= mask_utils.decode(rle).astype(bool)
        except (ValueError, TypeError) as err:
            raise DataError(f"{where}: cannot decode segmentation: {err}") from None
    return mask


def annotation_mask(index: CocoIndex, ann: dict, height: int, width: int) -> np.ndarray:
    """The mask of one annotation; an empty (zero-area) mask is a `DataError`."""
    where = index.where("annotations", ann["id"])
    mask = decode_segmentation(require(ann, "segmentation", where), height, width, where)
    if not mask.any():
        raise DataError(f"{where}: segmentation has zero area")
    return mask


def image_size(index: CocoIndex, image: dict) -> tuple[int, int]:
    """``(height, width)`` of an image record."""
    where = index.where("images", image["id"])
    return int(require(image, "height", where)), int(require(image, "width", where))
