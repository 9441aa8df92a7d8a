"""Image-caption pairs for pretraining a multimodal encoder (``evf pretrain-encoder``).

A caption source is indexable: ``source.pair(index, rng)`` gives one ``(image, caption)`` pair,
``uint8 [H,W,3]`` and a string, as a pure function of the index and the generator (an image with
several captions draws one). Three sources:

* `ShapesCaptions`: shapes scenes with generated captions (`evf.datamodules.shapes.captions`),
  drawn from a stream of their own, so pretraining never sees a scene the task trains or
  validates on.
* `JsonlCaptions`: a JSON Lines file, one ``{"image": "path", "caption": "text"}`` per line, image
  paths relative to the file's folder; lines naming the same image are one image with several
  captions.
* `CocoCaptions`: COCO's ``captions_train2017.json`` layout (``images`` with ``id`` /
  ``file_name``, ``annotations`` with ``image_id`` / ``caption``) and the images' folder.

Records are checked when the source is built: a malformed line, a missing field, an empty caption
or a missing image file is a `DataError` naming the file and the line (or the annotation id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evf.datamodules.common import DataError
from evf.datamodules.shapes.captions import caption_scene
from evf.datamodules.shapes.scene import ShapeObject, generate_scene
from evf.io import ImageReadError, read_rgb

PRETRAIN_SCENE_STREAM = 0x9C47  # shapes scenes for pretraining: a seed of their own, never the task's


class CaptionSource(Protocol):
    """Indexable image-caption pairs."""

    name: str

    def __len__(self) -> int: ...

    def pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``(uint8 [H,W,3] image, caption)`` of ``index``; ``rng`` draws among several captions."""
        ...


class ShapesCaptions:
    """Shapes scenes with generated captions.

    Args:
        num_images: scenes in the source.
        seed: base seed; the scenes come from ``seed`` mixed with `PRETRAIN_SCENE_STREAM`, so they
            are none of the task's scenes of any seed-0 run.
        split: ``train`` for pretraining, ``val`` for the probe's held-out scenes.
        max_sentences: most sentences per caption.
        num_objects: inclusive range of objects per scene (the task's scenes hold 3-5; scenes with
            one or two objects let an encoder learn where a thing is before it learns which).
    """

    def __init__(
        self,
        num_images: int,
        seed: int = 0,
        split: str = "train",
        max_sentences: int = 3,
        num_objects: tuple[int, int] = (3, 5),
    ) -> None:
        self.name = f"shapes_captions/{split}"
        self.num_images, self.seed, self.split, self.max_sentences = num_images, seed, split, max_sentences
        self.num_objects = tuple(num_objects)
        self._scenes: dict[int, tuple[np.ndarray, tuple[ShapeObject, ...]]] = {}

    def __len__(self) -> int:
        return self.num_images

    def scene(self, index: int) -> tuple[np.ndarray, tuple[ShapeObject, ...]]:
        """The image and objects of scene ``index`` (rendered once, then kept: a scene costs ~3 ms)."""
        if index not in self._scenes:
            scene = generate_scene(
                self.seed + PRETRAIN_SCENE_STREAM, self.split, index, num_objects=self.num_objects
            )
            self._scenes[index] = (scene.image, scene.objects)
        return self._scenes[index]

    def pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        image, objects = self.scene(index)
        height, width = image.shape[:2]
        return image, caption_scene(objects, width, height, rng, self.max_sentences)


class _FileCaptions:
    """Images on disk with their captions; ``images[i]`` has ``captions[i]`` (at least one)."""

    def __init__(self, name: str, images: list[Path], captions: list[list[str]]) -> None:
        if not images:
            raise DataError(f"{name}: no image-caption pairs")
        self.name, self.images, self.captions = name, images, captions

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        captions = self.captions[index]
        caption = captions[int(rng.integers(len(captions)))]
        try:
            return read_rgb(self.images[index]), caption
        except ImageReadError as error:
            raise DataError(f"{self.name}: {error}") from None


def _caption(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: 'caption' must be a non-empty string, got {value!r}")
    return value.strip()


def _image(folder: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: 'image' must be a path relative to the file, got {value!r}")
    path = folder / value
    if not path.is_file():
        raise DataError(f"{where}: image file not found: {path}")
    return path


class JsonlCaptions(_FileCaptions):
    """``{"image": "path", "caption": "text"}`` per line (see the module doc)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"caption file not found: {path}")
        by_image: dict[Path, list[str]] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not a JSON object ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key in ("image", "caption"):
                if key not in record:
                    raise DataError(f"{where}: missing field '{key}'")
            image = _image(path.parent, record["image"], where)
            by_image.setdefault(image, []).append(_caption(record["caption"], where))
        super().__init__(str(path), list(by_image), list(by_image.values()))


class CocoCaptions(_FileCaptions):
    """COCO captions: ``annotations`` (``captions_*.json``) and the ``images`` folder."""

    def __init__(self, annotations: str | Path, images: str | Path) -> None:
        annotations, folder = Path(annotations), Path(images)
        if not annotations.is_file():
            raise DataError(f"caption file not found: {annotations}")
        try:
            data = json.loads(annotations.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{annotations}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations")
        ):
            raise DataError(f"{annotations}: expected COCO captions with 'images' and 'annotations' lists")
        files: dict[int, str] = {}
        for k, image in enumerate(data["images"]):
            where = f"{annotations}: images[{k}]"
            if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
                raise DataError(f"{where}: needs 'id' and 'file_name'")
            files[image["id"]] = image["file_name"]
        by_image: dict[int, list[str]] = {}
        for k, ann in enumerate(data["annotations"]):
            where = f"{annotations}: annotations[{k}] (id {ann.get('id') if isinstance(ann, dict) else '?'})"
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise DataError(f"{where}: needs 'image_id' and 'caption'")
            if ann["image_id"] not in files:
                raise DataError(f"{where}: image_id {ann['image_id']} is not in 'images'")
            by_image.setdefault(ann["image_id"], []).append(_caption(ann["caption"], where))
        ids = sorted(by_image)
        paths = [_image(folder, files[i], f"{annotations}: image id {i}") for i in ids]
        super().__init__(str(annotations), paths, [by_image[i] for i in ids])


__all__ = ["PRETRAIN_SCENE_STREAM", "CaptionSource", "CocoCaptions", "JsonlCaptions", "ShapesCaptions"]
