"""Writers of the formats users bring (JSON Lines, mask folders, COCO instances, LabelMe), of LIP /
CIHP and of PASCAL-Part's raw .mat files, in their real layouts.

The ``*_from_shapes`` writers put the synthetic shapes dataset on disk in a format, losslessly (PNG
images; masks as RLE, pixel-edge polygons, mask PNGs or LabelMe mask shapes), so that reading it
back must give exactly the shapes DataModule's masks.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from evf.datamodules.shapes import ShapesDataset
from evf.datamodules.shapes.refer_writer import CATEGORY_IDS, pixel_outline

from .fixtures import picture, save_image, write_label_map


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": encoded["counts"].decode("ascii")}


def png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def shapes_scenes(split: str, count: int):
    """``(index, scene)`` of the shapes dataset's ``split`` (seed 0)."""
    dataset = ShapesDataset(split, count, seed=0, max_expressions=None)
    return [(i, dataset.scene(i)) for i in range(count)]


def write_jsonl_from_shapes(root: Path, splits: dict[str, int]) -> Path:
    """``root/annotations.jsonl``: one line per object (all its expressions), masks rotating through
    RLE, pixel-edge polygons and mask PNGs; images as PNG."""
    lines = []
    for split, count in splits.items():
        for index, scene in shapes_scenes(split, count):
            image = f"images/{split}_{index:04d}.png"
            save_image(root / image, scene.image)
            for k, (obj, mask) in enumerate(zip(scene.objects, scene.masks, strict=True)):
                encoding = k % 3
                if encoding == 0:
                    value: object = rle(mask)
                elif encoding == 1:
                    value = [pixel_outline(mask)]
                else:
                    value = f"masks/{split}_{index:04d}_{k}.png"
                    write_mask(root / value, mask)
                texts = [e.text for e in obj.expressions]
                lines.append({"image": image, "expressions": texts, "mask": value, "split": split})
    path = root / "annotations.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_mask_folder_from_shapes(root: Path, splits: dict[str, int]) -> Path:
    """``root/annotations.csv`` (image, mask, expression, split): one row per expression."""
    rows = []
    for split, count in splits.items():
        for index, scene in shapes_scenes(split, count):
            image = f"images/{split}_{index:04d}.png"
            save_image(root / image, scene.image)
            for k, (obj, mask) in enumerate(zip(scene.objects, scene.masks, strict=True)):
                mask_path = f"masks/{split}_{index:04d}_{k}.png"
                write_mask(root / mask_path, mask)
                rows += [(image, mask_path, e.text, split) for e in obj.expressions]
    path = root / "annotations.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "expression", "split"])
        writer.writerows(rows)
    return path


SHAPE_CATEGORIES = [{"id": i, "name": name, "supercategory": "shape"} for name, i in CATEGORY_IDS.items()]


def write_coco_from_shapes(root: Path, split: str, count: int) -> Path:
    """COCO's layout: ``annotations/instances_<split>.json`` (pixel-edge polygons, one category per
    shape) and ``<split>/<file_name>``."""
    images, annotations = [], []
    for index, scene in shapes_scenes(split, count):
        file_name = f"{index:012d}.png"
        save_image(root / split / file_name, scene.image)
        height, width = scene.image.shape[:2]
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for obj, mask in zip(scene.objects, scene.masks, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": CATEGORY_IDS[obj.shape],
                    "segmentation": [pixel_outline(mask)],
                    "area": float(mask.sum()),
                    "bbox": [float(v) for v in obj.bbox],
                    "iscrowd": 0,
                }
            )
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": SHAPE_CATEGORIES})
    )
    return path


def labelme_mask_shape(label: str, mask: np.ndarray, group_id: int | None = None) -> dict:
    """A LabelMe ``mask`` shape: the mask cropped to its box, corners included."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    crop = mask[y0 : y1 + 1, x0 : x1 + 1].astype(np.uint8)
    return {
        "label": label,
        "points": [[x0, y0], [x1, y1]],
        "group_id": group_id,
        "description": "",
        "shape_type": "mask",
        "flags": {},
        "mask": png_b64(crop),
    }


def write_labelme_file(
    folder: Path, stem: str, image: np.ndarray, shapes: list[dict], embed: bool = False, suffix: str = ".png"
) -> Path:
    """``<stem>.json`` beside its image (``imagePath``) or with the image embedded (``imageData``)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_data = None
    if embed:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        image_data = base64.b64encode(buffer.getvalue()).decode("ascii")
    else:
        save_image(folder / f"{stem}{suffix}", image)
    data = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"{stem}{suffix}",
        "imageData": image_data,
        "imageHeight": int(image.shape[0]),
        "imageWidth": int(image.shape[1]),
    }
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def write_labelme_from_shapes(folder: Path, split: str, count: int) -> None:
    """One LabelMe file per scene, each object a ``mask`` shape labelled with its shape name (every
    other file with its image embedded)."""
    for index, scene in shapes_scenes(split, count):
        shapes = [
            labelme_mask_shape(obj.shape, mask, group_id=k)
            for k, (obj, mask) in enumerate(zip(scene.objects, scene.masks, strict=True))
        ]
        write_labelme_file(folder, f"{split}_{index:04d}", scene.image, shapes, embed=index % 2 == 1)


def shape_unions(scene) -> dict[str, tuple[np.ndarray, int]]:
    """Per shape name in a scene: the union of its objects' masks and how many there are."""
    out: dict[str, tuple[np.ndarray, int]] = {}
    for obj, mask in zip(scene.objects, scene.masks, strict=True):
        union, count = out.get(obj.shape, (np.zeros_like(mask), 0))
        out[obj.shape] = (union | mask, count + 1)
    return out


# ---- LIP, CIHP ---------------------------------------------------------------------------------------
def write_lip(root: Path, labels: dict[str, dict[str, np.ndarray]], doubled: bool = False) -> Path:
    """The LIP release: ``TrainVal_images/<split>_images/*.jpg``, ``TrainVal_parsing_annotations/
    <split>_segmentations/*.png`` (``doubled``: each zip's folder inside a folder of its name)."""
    images = root / "TrainVal_images" / ("TrainVal_images" if doubled else "")
    parsing = root / "TrainVal_parsing_annotations" / ("TrainVal_parsing_annotations" if doubled else "")
    for split, maps in labels.items():
        for n, (name, label) in enumerate(maps.items()):
            save_image(images / f"{split}_images" / f"{name}.jpg", picture(*label.shape, n))
            write_label_map(parsing / f"{split}_segmentations" / f"{name}.png", label)
    return root


def write_cihp(root: Path, labels: dict[str, dict[str, np.ndarray]]) -> Path:
    """CIHP's ``instance-level_human_parsing/{Training,Validation}/{Images,Category_ids}``."""
    data = root / "instance-level_human_parsing"
    for split, maps in labels.items():
        folder = data / {"train": "Training", "val": "Validation"}[split]
        for n, (name, label) in enumerate(maps.items()):
            save_image(folder / "Images" / f"{name}.jpg", picture(*label.shape, n))
            write_label_map(folder / "Category_ids" / f"{name}.png", label)
        (folder / f"{split}_id.txt").write_text("".join(f"{name}\n" for name in maps))
    return data


# ---- PASCAL-Part raw annotations ---------------------------------------------------------------------
def write_pascal_part_mat(
    root: Path, images: dict[str, tuple[int, int, list[tuple[str, list[tuple[str, np.ndarray]]]]]], split: str
) -> None:
    """``Annotations_Part/<id>.mat`` as PASCAL-Part distributes them (a struct ``anno`` with
    ``imname`` and a 1xN struct array ``objects``: ``class``, ``class_ind``, ``mask``, and a 1xP
    struct array ``parts``: ``part_name``, ``mask``), the VOC 2010 images and image set.

    ``images``: id -> (height, width, [(object class, [(raw part name, mask)])])."""
    from scipy.io import savemat

    voc = root / "VOCdevkit" / "VOC2010"
    (root / "Annotations_Part").mkdir(parents=True, exist_ok=True)
    for n, (name, (height, width, objects)) in enumerate(images.items()):
        save_image(voc / "JPEGImages" / f"{name}.jpg", picture(height, width, n))
        records = np.zeros(
            (1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
        )
        for i, (object_class, parts) in enumerate(objects):
            part_records = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
            union = np.zeros((height, width), dtype=np.uint8)
            for j, (part_name, mask) in enumerate(parts):
                part_records[0, j] = (part_name, mask.astype(np.uint8))
                union |= mask.astype(np.uint8)
            records[0, i] = (
                object_class,
                np.array([[i + 1]], dtype=np.uint8),
                union,
                part_records if parts else np.zeros((0, 0)),
            )
        savemat(root / "Annotations_Part" / f"{name}.mat", {"anno": {"imname": name, "objects": records}})
    image_sets = voc / "ImageSets" / "Main"
    image_sets.mkdir(parents=True, exist_ok=True)
    (image_sets / f"{split}.txt").write_text("".join(f"{name}\n" for name in images))
