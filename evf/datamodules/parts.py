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

PASCAL-Part as its authors distribute it (kind ``pascal_part_mat``): one MATLAB file per image,
``anno.objects(i)`` with ``class``, ``mask`` and ``parts(j)`` with ``part_name`` and ``mask``; the
fine-grained part names are mapped to VLPart's 93 categories (`pascal_category`)::

    Annotations_Part/<image id>.mat
    VOCdevkit/VOC2010/JPEGImages/<image id>.jpg
    VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from evf.datamodules.coco import annotation_mask, image_size, index_coco, load_json
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


PASCAL_PARTS = {
    "aeroplane": ("body", "wing", "tail", "wheel"),
    "bicycle": ("wheel", "handlebar", "saddle"),
    "bird": ("beak", "head", "eye", "leg", "foot", "wing", "neck", "tail", "torso"),
    "bottle": ("body", "cap"),
    "bus": ("license plate", "headlight", "door", "mirror", "window", "wheel"),
    "car": ("license plate", "headlight", "door", "mirror", "window", "wheel"),
    "cat": ("head", "leg", "ear", "eye", "paw", "neck", "nose", "tail", "torso"),
    "cow": ("head", "leg", "ear", "eye", "neck", "horn", "muzzle", "tail", "torso"),
    "dog": ("head", "leg", "ear", "eye", "paw", "neck", "nose", "muzzle", "tail", "torso"),
    "horse": ("head", "leg", "ear", "eye", "neck", "muzzle", "tail", "torso"),
    "motorbike": ("wheel", "handlebar", "headlight", "saddle"),
    "person": ("hair", "head", "ear", "eye", "nose", "neck", "mouth", "arm", "hand", "leg", "foot", "torso"),
    "potted plant": ("plant", "pot"),
    "sheep": ("head", "leg", "ear", "eye", "neck", "horn", "muzzle", "tail", "torso"),
}  # fmt: skip
"""VLPart's 93 PASCAL-Part categories: object -> its parts, in VLPart's order (which decides ties)."""

CATEGORY_ORDER = {
    f"{obj} {part}": i for i, (obj, part) in enumerate((o, p) for o, ps in PASCAL_PARTS.items() for p in ps)
}
"""``"<object> <part>"`` -> its position among the 93 (VLPart's category id - 1)."""

_RAW_KEYS = {"license plate": "liplate", "paw": "pa"}
"""Parts whose raw annotation names abbreviate them (``fliplate``, ``lfpa``)."""


def pascal_category(object_class: str, raw_part: str) -> str | None:
    """The VLPart category of a raw PASCAL-Part part name, as ``"<object> <part>"``, or None.

    The raw names are fine-grained (``llarm``: left lower arm; ``lfpa``: left front paw;
    ``headlight_2``); the category is the first part of the object (in `PASCAL_PARTS` order) whose
    name (or abbreviation) the raw name contains, as VLPart's conversion does, so that both formats
    give the same masks. Unmatched names (``lebrow``, ``engine_1``, ``frontside``) are left out.
    """
    object_class = "potted plant" if object_class == "pottedplant" else object_class
    for part in PASCAL_PARTS.get(object_class, ()):
        if _RAW_KEYS.get(part, part) in raw_part:
            return f"{object_class} {part}"
    return None


def _text(value: object) -> str:
    """A MATLAB string as loaded by scipy (a ``(1,)`` array of str, or a str)."""
    array = np.asarray(value).ravel()
    return str(array[0]) if array.size else ""


def read_part_annotation(path: Path) -> list[tuple[str, np.ndarray]]:
    """``(category, mask)`` of every part of every object in a raw PASCAL-Part ``.mat``
    (``anno.objects(i).class``, ``.parts(j).part_name``, ``.parts(j).mask``), categories as
    `pascal_category` names them; unmatched parts are left out.

    Raises:
        DataError: the file is missing, not a MAT file, or lacks a field (the message names it).
    """
    from scipy.io import loadmat  # scipy loads in a second: only when .mat files are read
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise DataError(f"PASCAL-Part annotation not found: {path}")
    try:
        anno = loadmat(path)["anno"][0, 0]
        objects = anno["objects"]
    except (MatReadError, ValueError, OSError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"{path}: not a PASCAL-Part annotation (anno.objects): {err!r}") from None
    parts = []
    for i, obj in enumerate(objects.ravel()):
        where = f"{path} anno.objects({i + 1})"
        try:
            object_class, object_parts = _text(obj["class"]), obj["parts"]
            for part in object_parts.ravel():
                category = pascal_category(object_class, _text(part["part_name"]))
                if category is not None:
                    parts.append((category, np.asarray(part["mask"]) != 0))
        except (ValueError, KeyError, IndexError) as err:
            raise DataError(f"{where}: missing or malformed field ({err})") from None
    return parts


class PascalPartMatDataset(FileDataset):
    """PASCAL-Part from its raw per-image ``.mat`` annotations, with VLPart's 93 categories.

    Images whose objects have none of those parts are left out (as VLPart's conversion does), so
    every file is read once when the dataset is built.

    Args:
        root: the folder holding ``Annotations_Part/`` and ``VOCdevkit/``.
        split: a VOC 2010 image set, e.g. ``train`` or ``val`` (``ImageSets/Main/<split>.txt``).
        annotations: the folder of ``.mat`` files, relative to ``root``.
        voc: the VOC 2010 folder (``JPEGImages/``, ``ImageSets/Main/``), relative to ``root``.
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str = "Annotations_Part",
        voc: str = "VOCdevkit/VOC2010",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        super().__init__(f"pascal_part_mat/{split}", seed, max_expressions, augment, on_bad_sample)
        root = Path(root)
        annotation_dir = require_dir(root / annotations, "PASCAL-Part annotation folder")
        self.image_dir = require_dir(root / voc / "JPEGImages", "VOC 2010 image folder")
        image_set = root / voc / "ImageSets" / "Main" / f"{split}.txt"
        try:
            names = [line.split()[0] for line in image_set.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            raise DataError(f"VOC image set not found: {image_set}") from None
        self.items: list[Path] = []
        for name in names:
            path = annotation_dir / f"{name}.mat"
            try:
                if read_part_annotation(path):
                    self.items.append(path)
            except DataError as err:
                self._bad(str(err))

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        path = self.items[index]
        groups: dict[str, np.ndarray] = {}
        for category, mask in read_part_annotation(path):
            groups[category] = groups[category] | mask if category in groups else mask
        chosen = sorted(groups, key=CATEGORY_ORDER.__getitem__)  # VLPart's category order, as the json
        if rng is not None:
            chosen = [chosen[i] for i in draw(rng, len(chosen), self.max_expressions)]
        shapes = {groups[c].shape for c in chosen}
        if len(shapes) != 1:
            raise DataError(f"{path}: part masks of different sizes {sorted(shapes)}")
        image_path = self.image_dir / f"{path.stem}.jpg"
        return Sample(
            image=read_image(image_path, shapes.pop(), f"the masks of {path}"),
            masks=np.stack([groups[c] for c in chosen]),
            texts=[semantic_prompt(c) for c in chosen],
            image_id=f"{self.name}/{image_path.name}",
        )
