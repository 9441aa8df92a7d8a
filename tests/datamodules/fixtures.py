"""Writers of tiny datasets in the real on-disk layouts (file names, field names, encodings).

Every object is a union of axis-aligned rectangles ``(x0, y0, x1, y1)`` with integer corners, so
its true mask is known here independently of pycocotools (pixels ``[y0:y1, x0:x1]``) and a
polygon along the rectangle edges decodes to exactly those pixels. Each writer returns the truth
the tests compare against, pixel by pixel.
"""

from __future__ import annotations

import csv
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

Box = tuple[int, int, int, int]


def box_mask(height: int, width: int, boxes: list[Box]) -> np.ndarray:
    """The union of the rectangles as a bool mask."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def segmentation(height: int, width: int, boxes: list[Box], encoding: str) -> object:
    """COCO segmentation of the union of ``boxes``: ``polygon`` (one polygon per box), ``rle``
    (one compressed RLE dict), ``rle_list`` (a list holding it, as RefCLEF) or ``uncompressed``."""
    if encoding == "polygon":
        return [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)] for x0, y0, x1, y1 in boxes]
    mask = box_mask(height, width, boxes)
    if encoding == "uncompressed":
        flat = mask.ravel(order="F")  # runs in column-major order, the first one counting zeros
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        counts = ([0] if flat[0] else []) + np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        return {"size": [height, width], "counts": counts}
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    return [rle] if encoding == "rle_list" else rle


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB picture (survives JPEG well)."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float64)
    ys, xs = np.linspace(0, 1, height)[:, None, None], np.linspace(0, 1, width)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    return np.rint(top * (1 - ys) + bottom * ys).astype(np.uint8)


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def py2_pickle(obj: object) -> bytes:
    """Pickles plain data the way Python 2's cPickle (protocol 2) did: strings as byte strings
    (SHORT_BINSTRING / BINSTRING, UTF-8), no globals."""
    out = bytearray(b"\x80\x02")

    def emit(value: object) -> None:
        if value is None:
            out.extend(b"N")
        elif isinstance(value, bool):
            out.extend(b"\x88" if value else b"\x89")
        elif isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))
        elif isinstance(value, float):
            out.extend(b"G" + struct.pack(">d", value))
        elif isinstance(value, str):
            data = value.encode("utf-8")
            out.extend(
                (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))) + data
            )
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                emit(item)
            out.extend(b"e")
        elif isinstance(value, dict):
            out.extend(b"}(")
            for key, item in value.items():
                emit(key)
                emit(item)
            out.extend(b"u")
        else:
            raise TypeError(type(value))

    emit(obj)
    out.extend(b".")
    return bytes(out)


# ---- REFER (RefCOCO family) and gRefCOCO ------------------------------------------------------------
@dataclass
class Ref:
    """One referent: its rectangles, sentences, split and segmentation encoding."""

    boxes: list[Box]
    sentences: list[str]
    split: str
    encoding: str = "polygon"


@dataclass
class ReferImage:
    height: int
    width: int
    refs: list[Ref]
    image_id: int = 0
    file_name: str = ""
    truth: list[np.ndarray] = field(default_factory=list)


def coco_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def write_refer(
    root: Path, dataset: str, split_by: str, images: list[ReferImage], pickled: bool = True
) -> Path:
    """``root/<dataset>/refs(<split_by>).p`` (Python-2 pickle) + ``instances.json`` and the images at
    ``root/images/mscoco/images/train2014`` (``saiapr_tc-12`` for refclef). Fills in ids and truth."""
    data_dir = root / dataset
    data_dir.mkdir(parents=True, exist_ok=True)
    image_dir = root / ("images/saiapr_tc-12" if dataset == "refclef" else "images/mscoco/images/train2014")
    records, annotations, refs = [], [], []
    for n, image in enumerate(images):
        image.image_id = 9000 + 7 * n
        image.file_name = (
            f"{n}/images/{image.image_id}.jpg" if dataset == "refclef" else coco_name(image.image_id)
        )
        save_image(image_dir / image.file_name, picture(image.height, image.width, image.image_id))
        records.append(
            {"id": image.image_id, "file_name": image.file_name, "height": image.height, "width": image.width}
        )
        image.truth = []
        for ref in image.refs:
            ann_id = 100 + len(annotations)
            x0, y0 = min(b[0] for b in ref.boxes), min(b[1] for b in ref.boxes)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image.image_id,
                    "category_id": 1 + len(refs) % 2,
                    "iscrowd": 0,
                    "segmentation": segmentation(image.height, image.width, ref.boxes, ref.encoding),
                    "area": float(box_mask(image.height, image.width, ref.boxes).sum()),
                    "bbox": [x0, y0, 1.0, 1.0],
                }
            )
            sent_ids = list(range(10 * len(refs), 10 * len(refs) + len(ref.sentences)))
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": ann_id,
                    "image_id": image.image_id,
                    "split": ref.split,
                    "category_id": 1 + len(refs) % 2,
                    "file_name": f"{Path(image.file_name).stem}_{len(refs)}.jpg",
                    "sent_ids": sent_ids,
                    "sentences": [
                        {"tokens": s.split(), "raw": s.upper(), "sent_id": i, "sent": s}
                        for i, s in zip(sent_ids, ref.sentences, strict=True)
                    ],
                }
            )
            image.truth.append(box_mask(image.height, image.width, ref.boxes))
    categories = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 2, "name": "dog", "supercategory": "animal"},
    ]
    instances = {"images": records, "annotations": annotations, "categories": categories}
    (data_dir / "instances.json").write_text(json.dumps(instances))
    if pickled:
        (data_dir / f"refs({split_by}).p").write_bytes(py2_pickle(refs))
    return data_dir


@dataclass
class GRef:
    targets: list[int]  # indices into the image's objects; [] = no target
    sentences: list[str]
    split: str


def write_grefcoco(
    root: Path, images: list[tuple[int, int, list[list[Box]], list[GRef]]]
) -> list[list[np.ndarray]]:
    """``root/grefcoco/grefs(unc).json`` + ``instances.json``, images in the RefCOCO location.
    Each image: (height, width, objects as box lists, grefs). Returns the true mask per gref."""
    records, annotations, grefs, truth = [], [], [], []
    for n, (height, width, objects, image_refs) in enumerate(images):
        image_id = 500 + n
        save_image(
            root / "images/mscoco/images/train2014" / coco_name(image_id), picture(height, width, image_id)
        )
        records.append({"id": image_id, "file_name": coco_name(image_id), "height": height, "width": width})
        ids = []
        for boxes in objects:
            ids.append(len(annotations) + 1)
            annotations.append(
                {
                    "id": ids[-1],
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": segmentation(height, width, boxes, "polygon"),
                    "bbox": [0, 0, 1, 1],
                }
            )
        per_image = []
        for gref in image_refs:
            ann_ids = [ids[t] for t in gref.targets] or [-1]
            grefs.append(
                {
                    "ref_id": len(grefs),
                    "image_id": image_id,
                    "ann_id": ann_ids,
                    "category_id": [1] * len(gref.targets),
                    "split": gref.split,
                    "no_target": not gref.targets,
                    "file_name": coco_name(image_id),
                    "sentences": [
                        {"tokens": s.split(), "raw": s, "sent_id": 3 * len(grefs) + i, "sent": s}
                        for i, s in enumerate(gref.sentences)
                    ],
                }
            )
            per_image.append(box_mask(height, width, [b for t in gref.targets for b in objects[t]]))
        truth.append(per_image)
    data_dir = root / "grefcoco"
    data_dir.mkdir(parents=True, exist_ok=True)
    instances = {"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    (data_dir / "instances.json").write_text(json.dumps(instances))
    (data_dir / "grefs(unc).json").write_text(json.dumps(grefs))
    return truth


# ---- label-map datasets -----------------------------------------------------------------------------
def write_label_map(path: Path, label: np.ndarray, palette: list[int] | None = None) -> None:
    """An 8-bit label PNG: grey (``L``), or palette (``P``) when a palette is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
    image.save(path)


def write_ade20k(root: Path, labels: dict[str, list[np.ndarray]]) -> Path:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*``."""
    data = root / "ADEChallengeData2016"
    for split, maps in labels.items():
        folder, prefix = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}[split]
        for n, label in enumerate(maps, start=1):
            save_image(data / "images" / folder / f"{prefix}_{n:08d}.jpg", picture(*label.shape, n))
            write_label_map(data / "annotations" / folder / f"{prefix}_{n:08d}.png", label)
    return data


MAPILLARY_LABELS = [
    {"color": [165, 42, 42], "instances": True, "readable": "Bird", "name": "animal--bird", "evaluate": True},
    {
        "color": [196, 196, 196],
        "instances": False,
        "readable": "Curb",
        "name": "construction--barrier--curb",
        "evaluate": True,
    },
    {
        "color": [128, 64, 128],
        "instances": False,
        "readable": "Road",
        "name": "construction--flat--road",
        "evaluate": True,
    },
    {
        "color": [220, 20, 60],
        "instances": True,
        "readable": "Person",
        "name": "human--person",
        "evaluate": True,
    },
    {
        "color": [0, 0, 0],
        "instances": False,
        "readable": "Unlabeled",
        "name": "void--unlabeled",
        "evaluate": False,
    },
]


def write_mapillary(root: Path, version: str, labels: dict[str, dict[str, np.ndarray]]) -> Path:
    """Mapillary Vistas v2.0-release layout: ``config_<version>.json``, ``<folder>/images/*.jpg``,
    ``<folder>/<version>/labels/*.png`` (palette PNGs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"config_{version}.json").write_text(
        json.dumps({"labels": MAPILLARY_LABELS, "version": version, "mapping": "public"})
    )
    palette = [c for label in MAPILLARY_LABELS for c in label["color"]]
    for split, maps in labels.items():
        folder = {"train": "training", "val": "validation"}[split]
        for n, (key, label) in enumerate(maps.items()):
            save_image(root / folder / "images" / f"{key}.jpg", picture(*label.shape, n))
            write_label_map(root / folder / version / "labels" / f"{key}.png", label, palette)
    return root


def write_humanparsing(root: Path, labels: dict[str, np.ndarray]) -> Path:
    """``humanparsing/JPEGImages/<name>.jpg`` + ``SegmentationClassAug/<name>.png``."""
    data = root / "humanparsing"
    for n, (name, label) in enumerate(labels.items()):
        save_image(data / "JPEGImages" / f"{name}.jpg", picture(*label.shape, n))
        write_label_map(data / "SegmentationClassAug" / f"{name}.png", label)
    return data


# ---- COCO-style instance jsons (Objects365, PartImageNet, PASCAL-Part) -------------------------------
@dataclass
class CocoImage:
    file_name: str
    height: int
    width: int
    objects: list[tuple[int, list[Box]]]  # (category id, rectangles)
    encoding: str = "polygon"  # "none" writes boxes only (Objects365 before annotation)
    crowd: list[bool] = field(default_factory=list)


def write_coco(json_path: Path, image_dir: Path, images: list[CocoImage], categories: list[dict]) -> dict:
    """A COCO-style json and its images; returns the json dict."""
    records, annotations = [], []
    for n, image in enumerate(images, start=1):
        save_image(image_dir / image.file_name, picture(image.height, image.width, n))
        records.append({"id": n, "file_name": image.file_name, "height": image.height, "width": image.width})
        for k, (category_id, boxes) in enumerate(image.objects):
            x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
            ann = {
                "id": 10 * n + k,
                "image_id": n,
                "category_id": category_id,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": float((x1 - x0) * (y1 - y0)),
                "iscrowd": int(bool(image.crowd and image.crowd[k])),
            }
            if image.encoding != "none":
                ann["segmentation"] = segmentation(image.height, image.width, boxes, image.encoding)
            annotations.append(ann)
    data = {"images": records, "annotations": annotations, "categories": categories}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data))
    return data


PARTIMAGENET_CATEGORIES = [
    {"id": 0, "name": "Quadruped Head", "supercategory": "Quadruped"},
    {"id": 1, "name": "Quadruped Body", "supercategory": "Quadruped"},
    {"id": 15, "name": "Bird Wing", "supercategory": "Bird"},
]
PASCAL_PART_CATEGORIES = [
    {"id": 1, "name": "aeroplane:body"},
    {"id": 19, "name": "bus:license plate", "abbr": "bus:liplate"},
    {"id": 71, "name": "person:hair"},
]
OBJECTS365_CATEGORIES = [{"id": 1, "name": "Person"}, {"id": 2, "name": "Sneakers"}, {"id": 5, "name": "Car"}]


def fit_two_steps(config: Path, run: Path, *extra: str) -> list[dict[str, str]]:
    """`evf fit` of the tiny model for two steps on the data of ``config`` (plus ``extra`` flags),
    logging to a CSV under ``run``; the rows of its metrics.csv."""
    from evf.cli import main

    main(["fit", "--config", str(config), *extra, "--model.encoder=beit3_tiny", "--model.backend=sam_tiny",
          "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.num_sanity_val_steps=0",
          "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
          f"--trainer.default_root_dir={run}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
          f"--trainer.logger.init_args.save_dir={run}"])  # fmt: skip
    (metrics_file,) = run.rglob("metrics.csv")
    with metrics_file.open() as handle:
        return list(csv.DictReader(handle))
