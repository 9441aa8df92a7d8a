"""``labelme``: a folder of LabelMe JSON files (wkentaro/labelme), labels as expressions.

One file per image::

    {"version": "5.4.1", "shapes": [
        {"label": "mug", "points": [[x, y], ...], "group_id": null, "shape_type": "polygon", ...},
        {"label": "mug", "points": [[x0, y0], [x1, y1]], "group_id": 1, "shape_type": "rectangle"},
        {"label": "mug", "points": [[cx, cy], [px, py]], "group_id": 1, "shape_type": "circle"},
        {"label": "plate", "points": [[x0, y0], [x1, y1]], "shape_type": "mask", "mask": "<base64 PNG>"}],
     "imagePath": "0001.jpg", "imageData": null, "imageHeight": 480, "imageWidth": 640}

The image is the embedded ``imageData`` (base64) when present, else ``imagePath`` relative to the
file (LabelMe's own order). Shapes are drawn as LabelMe draws them (``labelme.utils.shape_to_mask``:
PIL polygons, rectangles and circles, outline included; a ``mask`` shape is a PNG covering the
pixels from its first corner to its second, both included). Shapes of one label with the same
``group_id`` are one instance; a shape without one is an instance of its own. Labels become
expressions through the templates of `evf.datamodules.categories` (``_`` becomes a space).
Point and line shapes have no area: they are an error unless ``ignore_shape_types`` lists them.

LabelMe's reserved labels never become expressions (its labelme2voc / labelme2coco conventions):
``__ignore__`` marks void pixels, as does any label listed in ``void_labels``; ``_background_``
marks background. Void pixels are the sample's ``void`` mask, left out of the loss and the metrics
of every expression on the image (as VOC's 255 is); their shapes are counted (``void_shapes``,
reported by ``evf data-check``). Background shapes are counted in ``background_shapes``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from evf.datamodules.categories import (
    DEFAULT_PLURAL_TEMPLATES,
    DEFAULT_TEMPLATES,
    CategoryDataset,
    CategoryImage,
    clean_name,
)
from evf.datamodules.coco import check_inside, load_json
from evf.datamodules.common import DataError, OnBadSample, read_image, require, require_dir
from evf.io import decode_rgb, read_rgb

VOID_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
RESERVED_LABELS = (VOID_LABEL, BACKGROUND_LABEL)
"""LabelMe's labels for void pixels and for the background: never an object to refer to."""
AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
"""Shape types with an area (the others: ``point``, ``points``, ``line``, ``linestrip``)."""


def _points(shape: dict, where: str, count: int | None) -> np.ndarray:
    """``points`` as ``[n,2]`` floats: exactly ``count`` of them, or (None) at least 3."""
    points = require(shape, "points", where)
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0,))
    if array.ndim != 2 or array.shape[1] != 2:
        raise DataError(f"{where}: 'points' must be a list of [x, y] pairs")
    if count is None and len(array) < 3:
        raise DataError(f"{where}: a polygon needs at least 3 points, got {len(array)}")
    if count is not None and len(array) != count:
        raise DataError(f"{where}: a {shape.get('shape_type')} needs {count} points, got {len(array)}")
    return array


def _decode_png(data: Any, where: str, what: str) -> Image.Image:
    if not isinstance(data, str):
        raise DataError(f"{where}: '{what}' must be a base64 string")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=False)))
        image.load()
        return image
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{where}: cannot decode '{what}': {err}") from None


def shape_mask(shape: dict, height: int, width: int, where: str) -> np.ndarray:
    """One LabelMe shape as a bool ``[height, width]`` mask, drawn as LabelMe draws it.

    Raises:
        DataError: wrong points, a vertex outside the image, an undecodable or misplaced mask, or an
            empty result.
    """
    kind = shape.get("shape_type") or "polygon"
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "mask":
        (x0, y0), (x1, y1) = _points(shape, where, 2).astype(int)
        check_inside(np.array([[x0, y0], [x1 + 1, y1 + 1]], dtype=np.float64), height, width, where)
        part = np.asarray(_decode_png(require(shape, "mask", where), where, "mask")) != 0
        if part.ndim == 3:
            part = part.any(axis=2)
        if part.shape != (y1 - y0 + 1, x1 - x0 + 1):
            raise DataError(
                f"{where}: the mask is {part.shape[0]}x{part.shape[1]} but its corners span "
                f"{y1 - y0 + 1}x{x1 - x0 + 1} pixels (height x width)"
            )
        mask = np.zeros((height, width), dtype=bool)
        mask[y0 : y1 + 1, x0 : x1 + 1] = part
    else:
        points = _points(shape, where, None if kind == "polygon" else 2)
        check_inside(points, height, width, where)
        xy = [tuple(p) for p in points.tolist()]
        if kind == "polygon":
            draw.polygon(xy, outline=1, fill=1)
        elif kind == "rectangle":
            (ax, ay), (bx, by) = xy
            draw.rectangle([min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)], outline=1, fill=1)
        else:  # circle: the centre and a point on the circle
            (cx, cy), (px, py) = xy
            radius = math.hypot(cx - px, cy - py)
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=1, fill=1)
        mask = np.asarray(canvas) != 0
    if not mask.any():
        raise DataError(f"{where}: the {kind} has zero area")
    return mask


class LabelMeDataset(CategoryDataset):
    """A folder of LabelMe files as referring expressions (see the module docstring).

    Args:
        root: the dataset folder.
        split: replaces ``{split}`` in ``annotations``.
        annotations: the folder of ``*.json`` files, relative to ``root`` (``.``: ``root`` itself;
            e.g. ``{split}`` for one subfolder per split).
        templates, plural_templates, semantic, negatives: see `CategoryDataset`.
        ignore_shape_types: shape types to leave out (e.g. ``[point, line]``) instead of refusing them.
        void_labels: labels that mark void regions, as ``__ignore__`` does.
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str = ".",
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        plural_templates: Sequence[str] = DEFAULT_PLURAL_TEMPLATES,
        semantic: bool = False,
        negatives: int = 0,
        ignore_shape_types: Sequence[str] = (),
        void_labels: Sequence[str] = (),
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(
            f"labelme/{split}", templates, plural_templates, semantic, negatives,
            seed, max_expressions, augment, on_bad_sample,
        )  # fmt: skip
        self.folder = require_dir(Path(root) / annotations.format(split=split), "LabelMe folder")
        self.ignore_shape_types = frozenset(ignore_shape_types)
        self.void_labels = frozenset({VOID_LABEL, *void_labels})
        self.void_shapes = 0
        self.background_shapes = 0
        parsed = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                parsed.append(self._parse(path))
            except DataError as err:
                self._bad(str(err))
        self.names = sorted({name for item in parsed for name in item.categories})
        self.items = [item for item in parsed if self.keeps(item.categories)]
        if not parsed and not self.skipped:
            raise DataError(f"no LabelMe *.json files in {self.folder}")

    def _parse(self, path: Path) -> CategoryImage:
        """The file's image source and instances (shapes of one label and ``group_id`` together)."""
        data = load_json(path, "LabelMe file")
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a LabelMe JSON object")
        shapes = require(data, "shapes", str(path))
        if not isinstance(shapes, list):
            raise DataError(f"{path}: 'shapes' must be a list")
        instances: dict[tuple[str, Any], list[tuple[int, dict]]] = {}
        void: list[tuple[int, dict]] = []
        for k, shape in enumerate(shapes):
            where = f"{path} shapes[{k}]"
            kind = (shape.get("shape_type") or "polygon") if isinstance(shape, dict) else None
            if kind in self.ignore_shape_types:
                continue
            if kind not in AREA_SHAPES:
                raise DataError(
                    f"{where}: shape_type {kind!r} has no area; EVF reads {', '.join(AREA_SHAPES)} "
                    "(list other types in the option ignore_shape_types to leave them out)"
                )
            raw = require(shape, "label", where)
            if raw in self.void_labels:
                self.void_shapes += 1
                void.append((k, shape))
                continue
            if raw == BACKGROUND_LABEL:
                self.background_shapes += 1
                continue
            label = clean_name(raw)
            if not label:
                raise DataError(f"{where}: empty label")
            group = shape.get("group_id")
            if group is not None and not isinstance(group, int):
                raise DataError(f"{where}: group_id must be an integer or null, got {group!r}")
            instances.setdefault((label, ("shape", k) if group is None else group), []).append((k, shape))
        categories: dict[str, list[tuple[Any, int]]] = {}
        for (label, _), members in instances.items():
            categories.setdefault(label, []).append((members, 1))
        if data.get("imageData") is None and not isinstance(data.get("imagePath"), str):
            raise DataError(f"{path}: neither 'imageData' nor an 'imagePath'")
        source = {
            "path": path,
            "embedded": data.get("imageData") is not None,
            "image_path": data.get("imagePath"),
            "size": (data.get("imageHeight"), data.get("imageWidth")),
            "void": void,
        }
        return CategoryImage(source, f"{self.name}/{path.relative_to(self.folder).as_posix()}", categories)

    def read_image(self, item: CategoryImage) -> np.ndarray:
        source = item.source
        path, size = source["path"], source["size"]
        annotated = all(isinstance(v, int) for v in size)
        if source["embedded"]:
            data = load_json(path, "LabelMe file")["imageData"]
            try:
                encoded = base64.b64decode(data, validate=False) if isinstance(data, str) else b""
            except binascii.Error as err:
                raise DataError(f"{path}: cannot decode 'imageData': {err}") from None
            image = decode_rgb(encoded, f"{path} imageData")
            if annotated and image.shape[:2] != tuple(size):
                raise DataError(
                    f"{path}: imageData is {image.shape[0]}x{image.shape[1]} but imageHeight x imageWidth "
                    f"say {size[0]}x{size[1]}"
                )
            return image
        image_path = path.parent / source["image_path"]
        if annotated:
            return read_image(image_path, size, f"{path} imageHeight/imageWidth")
        return read_rgb(image_path)

    def void_mask(self, item: CategoryImage, height: int, width: int) -> np.ndarray | None:
        """The union of the file's void shapes (`RESERVED_LABELS`, ``void_labels``), or None."""
        if not item.source["void"]:
            return None
        return self.instance_mask(item, item.source["void"], height, width)

    def instance_mask(self, item: CategoryImage, instance: Any, height: int, width: int) -> np.ndarray:
        path = item.source["path"]
        mask = np.zeros((height, width), dtype=bool)
        for k, shape in instance:
            mask |= shape_mask(shape, height, width, f"{path} shapes[{k}]")
        return mask
