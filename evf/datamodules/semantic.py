"""Semantic segmentation as class-level referring: ADE20K and Mapillary Vistas.

One item per image. Its expressions are ``"[semantic] <class name>"`` for classes present in the
label map, each with that class's pixels as mask: up to ``max_expressions`` drawn per
``(seed, epoch, index)`` in training, every present class in evaluation.

ADE20K (SceneParsing, ``ADEChallengeData2016``)::

    images/{training,validation}/ADE_*.jpg
    annotations/{training,validation}/ADE_*.png     8-bit ids: 0 = other (ignored), 1..150 = classes

Mapillary Vistas (v2.0 release, which also carries v1.2; or the v1.x release)::

    config_v2.0.json, config_v1.2.json (v1.x release: config.json)   {"labels": [{"readable": ...}, ...]}
    {training,validation}/images/*.jpg
    {training,validation}/v2.0/labels/*.png    palette PNGs, index = position in "labels"
    {training,validation}/v1.2/labels/*.png    (v1.x release: {training,validation}/labels/*.png)

Class names: ADE20K uses the first name of each entry of the official ``objectInfo150`` list;
Mapillary the lower-cased ``readable`` name of its config. Mapillary's "Unlabeled" class is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from evf.datamodules.coco import load_json
from evf.datamodules.common import (
    DataError,
    FileDataset,
    OnBadSample,
    draw,
    read_image,
    require,
    require_dir,
    semantic_prompt,
)
from evf.datamodules.sample import Sample
from evf.io import read_label

SPLIT_FOLDERS = {"train": "training", "val": "validation"}

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door", "table",
    "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat",
    "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight",
    "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""ADE20K's 150 classes in id order (id ``k`` is ``ADE20K_CLASSES[k - 1]``)."""


class LabelMapDataset(FileDataset):
    """Images with label maps of class ids; every present class becomes a ``[semantic]`` expression.

    Args:
        name: dataset and split, for messages.
        pairs: ``(image file, label map file)`` per item.
        classes: class id -> name; a value outside it and ``ignore`` is an error naming the file.
        ignore: ids that are not classes (unlabeled, void).
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        name: str,
        pairs: list[tuple[Path, Path]],
        classes: Mapping[int, str],
        ignore: frozenset[int] = frozenset(),
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(name, seed, max_expressions, augment, on_bad_sample)
        if not pairs:
            raise DataError(f"{name}: no label maps found")
        self.pairs = pairs
        self.classes = dict(classes)
        self.ignore = ignore

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        image_path, label_path = self.pairs[index]
        label = read_label(label_path)
        present = [int(v) for v in np.unique(label) if int(v) not in self.ignore]
        unknown = [v for v in present if v not in self.classes]
        if unknown:
            raise DataError(
                f"label map {label_path}: value {unknown[0]} is not a class id of {self.name} "
                f"(classes {min(self.classes)}..{max(self.classes)}, ignored {sorted(self.ignore)})"
            )
        if not present:
            raise DataError(f"label map {label_path} holds no class, only ignored values")
        chosen = (
            present if rng is None else [present[i] for i in draw(rng, len(present), self.max_expressions)]
        )
        return Sample(
            image=read_image(image_path, label.shape, f"label map {label_path}"),
            masks=np.stack([label == c for c in chosen]),
            texts=[semantic_prompt(self.classes[c]) for c in chosen],
            image_id=f"{self.name}/{image_path.name}",
        )


def label_pairs(image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    """Each ``<label_dir>/X.png`` with its image ``<image_dir>/X.jpg``, sorted by name."""
    return [(image_dir / f"{p.stem}.jpg", p) for p in sorted(label_dir.glob("*.png"))]


def _folder(split: str) -> str:
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FOLDERS)}")
    return SPLIT_FOLDERS[split]


class ADE20KDataset(LabelMapDataset):
    """ADE20K (SceneParsing 150 classes), ``root`` = the ``ADEChallengeData2016`` folder.

    Args:
        root: folder holding ``images/`` and ``annotations/``.
        split: ``train`` (training) or ``val`` (validation).
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        root, folder = Path(root), _folder(split)
        label_dir = require_dir(root / "annotations" / folder, "ADE20K annotation folder")
        pairs = label_pairs(require_dir(root / "images" / folder, "ADE20K image folder"), label_dir)
        classes = {k + 1: name for k, name in enumerate(ADE20K_CLASSES)}
        super().__init__(
            f"ade20k/{split}", pairs, classes, frozenset({0}), seed, max_expressions, augment, on_bad_sample
        )


class MapillaryDataset(LabelMapDataset):
    """Mapillary Vistas, v2.0 (124 classes) or v1.2 (66 classes) labels.

    Args:
        root: the dataset folder (holds the config json and ``training/``, ``validation/``).
        split: ``train`` (training) or ``val`` (validation).
        version: ``v2.0`` or ``v1.2``.
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        version: str = "v2.0",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        if version not in ("v2.0", "v1.2"):
            raise ValueError(f"unknown Mapillary Vistas version {version!r}; expected 'v2.0' or 'v1.2'")
        root, folder = Path(root), _folder(split)
        config = root / f"config_{version}.json"
        if version == "v1.2" and not config.is_file() and (root / "config.json").is_file():
            config = root / "config.json"  # the v1.x release
        labels = require(load_json(config, "Mapillary Vistas config"), "labels", str(config))
        names = {
            i: str(require(label, "readable", f"{config} labels[{i}]")).lower()
            for i, label in enumerate(labels)
        }
        label_dir = root / folder / version / "labels"
        if version == "v1.2" and not label_dir.is_dir():
            label_dir = root / folder / "labels"  # the v1.x release
        pairs = label_pairs(
            require_dir(root / folder / "images", "Mapillary image folder"),
            require_dir(label_dir, "Mapillary label folder"),
        )
        ignore = frozenset(i for i, name in names.items() if name == "unlabeled")
        super().__init__(
            f"mapillary-{version}/{split}",
            pairs,
            names,
            ignore,
            seed,
            max_expressions,
            augment,
            on_bad_sample,
        )
