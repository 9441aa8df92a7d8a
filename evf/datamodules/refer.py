"""RefCOCO, RefCOCO+, RefCOCOg and RefCLEF in the REFER layout (lichengunc/refer).

Layout under ``root`` (REFER's ``data_root``)::

    <dataset>/refs(<split_by>).p             the refs: a Python-2-era pickle of plain lists and dicts
    <dataset>/instances.json                 COCO images, annotations (polygons or RLE), categories
    images/mscoco/images/train2014/<file>    COCO train2014 images (refcoco, refcoco+, refcocog)
    images/saiapr_tc-12/<file>               the ImageCLEF subset (refclef)

A ref is ``{ref_id, ann_id, image_id, split, sentences: [{sent, raw, tokens, sent_id}], ...}``. Splits
follow REFER's ``getRefIds``: ``train`` and ``val`` match exactly, ``test`` matches every split
containing "test", and ``testA`` matches every split containing "A" (``testA``, ``testAB``).
RefCOCO / RefCOCO+ (unc): train, val, testA, testB; RefCOCOg (umd): train, val, test; RefCOCOg
(google): train, val; RefCLEF (unc): train, val, testA, testB, testC; RefCLEF (berkeley): train, val, test.

One item per image that has refs in the split. Training: up to ``max_expressions`` distinct refs,
one sentence each, drawn per ``(seed, epoch, index)``. Evaluation: every sentence of every ref.

The pickle is read by `load_refs`, whose unpickler admits plain built-in types only, so a tampered
file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from evf.datamodules.coco import CocoIndex, annotation_mask, image_size, index_coco, load_json
from evf.datamodules.common import DataError, FileDataset, OnBadSample, draw, read_image, require, require_dir
from evf.datamodules.sample import Sample

COCO_IMAGES = "images/mscoco/images/train2014"
IMAGE_DIRS = {
    "refcoco": COCO_IMAGES,
    "refcoco+": COCO_IMAGES,
    "refcocog": COCO_IMAGES,
    "refclef": "images/saiapr_tc-12",
}
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc"}
SPLITS = ("train", "val", "test", "testA", "testB", "testC")

# Globals a REFER pickle may name: plain containers and scalars (Python 2 names included), and
# `_codecs.encode`, which Python 3 uses to pickle bytes at protocol 2. Nothing that runs code.
_PLAIN_TYPES = ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool")
_SAFE_GLOBALS = (
    {("builtins", name) for name in (*_PLAIN_TYPES, "bytes", "bytearray", "complex")}
    | {("__builtin__", name) for name in (*_PLAIN_TYPES, "unicode", "long")}
    | {("_codecs", "encode")}
)


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that is not plain data."""


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global outside `_SAFE_GLOBALS` (``os.system``, ``eval``, classes, ...)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise _RefusedGlobal(f"it names the global {module}.{name}")
        return super().find_class(module, name)


def _to_text(value: Any) -> Any:
    """Python 2 ``str`` objects arrive as bytes: decode them (UTF-8, else Latin-1), recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_to_text(k): _to_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_text(v) for v in value]
    return value


def load_refs(path: Path) -> list[dict]:
    """Reads a REFER ``refs(<split_by>).p`` as it was released (Python 2 pickles load too).

    Raises:
        DataError: the file is missing, is not a pickle of a list, or names any global beyond plain
            built-in types (a refs file never does; such a file could run code when unpickled).
    """
    try:
        with open(path, "rb") as f:
            refs = _PlainUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"REFER refs file not found: {path}") from None
    except _RefusedGlobal as err:
        raise DataError(
            f"refusing to load {path}: {err}; a REFER refs pickle holds only lists, dicts, strings and "
            "numbers, so this file was not written by the REFER tools or was tampered with"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path} is not a readable pickle: {err!r}") from None
    refs = _to_text(refs)
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def in_split(ref_split: str, split: str) -> bool:
    """REFER's split rule (see the module docstring)."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


class ReferDataset(FileDataset):
    """One REFER dataset split (see the module docstring for layout and splits).

    Args:
        root: REFER ``data_root`` (holds ``<dataset>/`` and ``images/``).
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or ``refclef``.
        split: ``train``, ``val``, ``test``, ``testA``, ``testB`` or ``testC``, as the dataset defines them.
        split_by: which refs file, e.g. ``unc``, ``umd``, ``google``, ``berkeley`` (None = the usual
            one: umd for refcocog, unc otherwise).
        image_dir: image folder (None = the REFER location under ``root``).
        seed, max_expressions, augment, on_bad_sample: see `FileDataset`.
    """

    refs_file = "refs({split_by}).p"

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split: str = "train",
        split_by: str | None = None,
        image_dir: str | Path | None = None,
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown REFER split {split!r}; expected one of {SPLITS}")
        self.dataset = dataset
        self.split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "unc")
        super().__init__(f"{dataset}({self.split_by})/{split}", seed, max_expressions, augment, on_bad_sample)
        root = Path(root)
        data_dir = require_dir(root / dataset, f"{dataset} annotation folder")
        self.image_dir = require_dir(self._image_dir(root, image_dir), f"{dataset} image folder")
        refs_path = data_dir / self.refs_file.format(split_by=self.split_by)
        refs = self.read_refs(refs_path)
        self.coco: CocoIndex = index_coco(
            load_json(data_dir / "instances.json", "REFER instances"), data_dir / "instances.json", self._bad
        )
        self.items = self._index(refs, refs_path, split)

    def _image_dir(self, root: Path, image_dir: str | Path | None) -> Path:
        if image_dir is not None:
            return Path(image_dir)
        if self.dataset not in IMAGE_DIRS:
            known = sorted(IMAGE_DIRS)
            raise ValueError(
                f"unknown REFER dataset {self.dataset!r}; expected one of {known} (or set image_dir)"
            )
        return root / IMAGE_DIRS[self.dataset]

    def read_refs(self, path: Path) -> list[dict]:
        """The list of refs in ``path``."""
        return load_refs(path)

    def ann_ids(self, ref: dict, where: str) -> list[int]:
        """The annotations a ref points at."""
        return [require(ref, "ann_id", where)]

    def _index(self, refs: list[dict], refs_path: Path, split: str) -> list[tuple[dict, list[dict]]]:
        selected = [r for r in refs if in_split(str(require(r, "split", f"{refs_path} refs[]")), split)]
        if not selected:
            present = sorted({str(r.get("split")) for r in refs})
            raise DataError(f"{refs_path}: no refs in split {split!r}; the file has splits {present}")
        by_image: dict[int, list[dict]] = {}
        for ref in selected:
            problem = self._check(ref, f"{refs_path} ref_id={ref.get('ref_id')}")
            if problem:
                self._bad(problem)
            else:
                by_image.setdefault(ref["image_id"], []).append(ref)
        return [(self.coco.images[i], by_image[i]) for i in sorted(by_image)]

    def _check(self, ref: dict, where: str) -> str:
        """What is wrong with a ref ("" = nothing)."""
        try:
            image_id, sentences = require(ref, "image_id", where), require(ref, "sentences", where)
            missing = [a for a in self.ann_ids(ref, where) if a not in self.coco.annotations]
        except DataError as err:
            return str(err)
        if image_id not in self.coco.images:
            return f"{where}: image_id {image_id} is not in {self.coco.path.name} images"
        if missing:
            return f"{where}: ann_id {missing[0]} is not in {self.coco.path.name} annotations"
        if not isinstance(sentences, list) or not sentences:
            return f"{where}: no sentences"
        return ""

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int, rng: np.random.Generator | None) -> Sample:
        image, refs = self.items[index]
        if rng is None:
            chosen = [(i, sent) for i, ref in enumerate(refs) for sent in ref["sentences"]]
        else:
            picks = draw(rng, len(refs), self.max_expressions)
            chosen = [(i, refs[i]["sentences"][int(rng.integers(len(refs[i]["sentences"])))]) for i in picks]
        height, width = image_size(self.coco, image)
        masks = {i: self.ref_mask(refs[i], height, width) for i in sorted({i for i, _ in chosen})}
        kinds = [self.kind(refs[i]) for i, _ in chosen]
        where = self.coco.where("images", image["id"])
        file_name = require(image, "file_name", where)
        return Sample(
            image=read_image(self.image_dir / file_name, (height, width), where),
            masks=np.stack([masks[i] for i, _ in chosen]),
            texts=[self._text(refs[i], sent) for i, sent in chosen],
            image_id=f"{self.dataset}/{file_name}",
            kinds=kinds if any(kinds) else [],
        )

    def ref_mask(self, ref: dict, height: int, width: int) -> np.ndarray:
        """The mask of the referent (several polygons of one object merged)."""
        return annotation_mask(self.coco, self.coco.annotations[ref["ann_id"]], height, width)

    def kind(self, ref: dict) -> str:
        """A per-expression tag for per-type metrics ("" = none)."""
        return ""

    def _text(self, ref: dict, sent: dict) -> str:
        sent_id = sent.get("sent_id") if isinstance(sent, dict) else None
        where = f"{self.name} ref_id={ref.get('ref_id')} sent_id={sent_id}"
        text = str(require(sent, "sent", where)).strip()
        if not text:
            raise DataError(f"{where}: empty sentence")
        return text
