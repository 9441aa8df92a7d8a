"""Writes the shapes dataset in RefCOCO's REFER layout, so REFER readers can train on it.

Layout under ``root`` (as lichengunc/refer's ``REFER(data_root, dataset, splitBy)`` expects)::

    <dataset_name>/refs(<split_by>).p   pickle (protocol 2, plain built-in types) of the refs
    <dataset_name>/instances.json       COCO images, annotations (polygons) and categories
    images/<file_name>                  PNG images (lossless, so masks match the pixels)

One ref per object, carrying every expression of that object as its sentences. Each annotation's
polygon traces the pixel boundary of the drawn mask (a staircase), so pycocotools reproduces the
mask exactly; the drawing polygon itself would lose about a pixel row on small shapes.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import ShapesDataset
from .expressions import SHAPES
from .scene import ShapeObject

CATEGORY_IDS = {shape: i + 1 for i, shape in enumerate(SHAPES)}


def pixel_outline(mask: np.ndarray) -> list[float]:
    """The boundary of a row-convex mask along pixel edges, as a flat COCO polygon.

    Pixel ``(x, y)`` covers ``[x, x+1] x [y, y+1]`` in COCO coordinates; the outline runs down the
    right ends of the rows and back up their left ends, without collinear vertices.

    Args:
        mask: bool ``[H,W]`` whose non-empty rows are consecutive, one run of pixels each.

    Returns:
        ``[x0, y0, x1, y1, ...]``.

    Raises:
        ValueError: if the mask is empty or not row-convex.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0 or rows[-1] - rows[0] + 1 != rows.size:
        raise ValueError("mask is empty or its rows are not consecutive")
    runs = []
    for y in rows:
        xs = np.flatnonzero(mask[y])
        if xs[-1] - xs[0] + 1 != xs.size:
            raise ValueError(f"mask row {y} holds more than one run of pixels")
        runs.append((int(y), int(xs[0]), int(xs[-1]) + 1))
    points = [p for y, _, right in runs for p in ((right, y), (right, y + 1))]
    points += [p for y, left, _ in reversed(runs) for p in ((left, y + 1), (left, y))]
    points = [p for i, p in enumerate(points) if p != points[i - 1]]
    corners = [
        p
        for i, p in enumerate(points)
        if not (points[i - 1][0] == p[0] == points[(i + 1) % len(points)][0])
        and not (points[i - 1][1] == p[1] == points[(i + 1) % len(points)][1])
    ]
    return [float(v) for p in corners for v in p]


def _annotation(ann_id: int, image_id: int, obj: ShapeObject, mask: np.ndarray) -> dict:
    """The COCO annotation of one object."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_IDS[obj.shape],
        "segmentation": [pixel_outline(mask)],
        "area": float(obj.area),
        "bbox": [float(v) for v in obj.bbox],
        "iscrowd": 0,
    }


def _ref(
    ref_id: int, ann_id: int, image_id: int, split: str, file_name: str, obj: ShapeObject, sent_id: int
) -> dict:
    """The REFER ref of one object, its sentences numbered from ``sent_id``."""
    sentences = [
        {"tokens": e.text.split(), "raw": e.text, "sent_id": sent_id + i, "sent": e.text}
        for i, e in enumerate(obj.expressions)
    ]
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "split": split,
        "sentences": sentences,
        "sent_ids": [s["sent_id"] for s in sentences],
        "file_name": f"{Path(file_name).stem}_{ref_id}.jpg",
        "category_id": CATEGORY_IDS[obj.shape],
    }


def write_refer(
    root: Path,
    num_images: dict[str, int],
    seed: int = 0,
    dataset_name: str = "shapes",
    split_by: str = "unc",
) -> Path:
    """Renders the shapes dataset to disk in the REFER layout.

    Image ids and annotation ids count from 1, ref ids and sentence ids from 0, over all splits.

    Args:
        root: the REFER ``data_root``.
        num_images: scenes per split, e.g. ``{"train": 1000, "val": 100, "test": 100}``.
        seed: the shapes seed (the same scenes as ``ShapesDataset(split, n, seed)``).
        dataset_name: folder name, REFER's ``dataset`` argument.
        split_by: REFER's ``splitBy`` argument, which names the refs file.

    Returns:
        The dataset folder ``root/<dataset_name>``.
    """
    root = Path(root)
    data_dir, image_dir = root / dataset_name, root / "images"
    data_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    refs: list[dict] = []
    sent_id = 0
    for split, count in num_images.items():
        dataset = ShapesDataset(split, count, seed=seed, max_expressions=None)
        for index in range(count):
            scene = dataset.scene(index)
            image_id, file_name = len(images) + 1, f"{dataset_name}_{split}_{index:06d}.png"
            Image.fromarray(scene.image).save(image_dir / file_name)
            height, width = scene.image.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for obj, mask in zip(scene.objects, scene.masks, strict=True):
                ann_id = len(annotations) + 1
                annotations.append(_annotation(ann_id, image_id, obj, mask))
                refs.append(_ref(len(refs), ann_id, image_id, split, file_name, obj, sent_id))
                sent_id += len(obj.expressions)
    categories = [{"id": i, "name": shape, "supercategory": "shape"} for shape, i in CATEGORY_IDS.items()]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (data_dir / "instances.json").write_text(json.dumps(instances))
    with open(data_dir / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return data_dir
