"""``referring_jsonl``: referring expressions in a JSON Lines file, one referent per line.

    {"image": "images/1.jpg", "expressions": ["the red mug", "mug on the left"], "mask": {"size": [480, 640], "counts": "..."}}
    {"image": "images/1.jpg", "expressions": ["the plate"], "mask": [[10, 10, 50, 10, 50, 40]], "split": "val"}
    {"image": "images/2.jpg", "expressions": ["the cat"], "mask": "masks/2_cat.png"}
    {"image": "images/2.jpg", "expressions": ["a giraffe"], "no_target": true}

``image`` and a mask image path are relative to the file's folder. ``mask`` is a COCO RLE dict
(compressed or uncompressed counts; ``size`` = ``[height, width]`` of the image), COCO polygons or
a mask image (non-zero = target); ``no_target: true`` (with no ``mask``) is an expression that
matches nothing (an all-False mask, tagged ``no_target``). Optional ``split``; other fields are
ignored. Lines sharing an image form one item (`evf.datamodules.referents`).
"""  # noqa: E501

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evf.datamodules.common import DataError, OnBadSample, require
from evf.datamodules.referents import Referent, ReferentDataset, check_expressions, select_split


def parse_line(record: Any, folder: Path, where: str) -> tuple[str | None, Path, Referent]:
    """``(split, image path, referent)`` of one parsed line; a `DataError` names ``where`` and the field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    image = require(record, "image", where)
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: 'image' must be a path relative to the file")
    expressions = check_expressions(require(record, "expressions", where), where)
    no_target = record.get("no_target", False)
    if not isinstance(no_target, bool):
        raise DataError(f"{where}: 'no_target' must be true or false, got {no_target!r}")
    mask = record.get("mask")
    if no_target and mask is not None:
        raise DataError(f"{where}: 'no_target: true' and a 'mask' contradict each other")
    if not no_target:
        if mask is None:
            raise DataError(f"{where}: missing field 'mask' (or 'no_target': true)")
        if isinstance(mask, str):
            mask = folder / mask
        elif not isinstance(mask, dict | list):
            raise DataError(f"{where}: 'mask' must be an RLE dict, a list of polygons or a mask image path")
    split = record.get("split")
    if split is not None and not isinstance(split, str):
        raise DataError(f"{where}: 'split' must be a string, got {split!r}")
    return split, folder / image, Referent(expressions, mask if not no_target else None, where)


class ReferringJsonlDataset(ReferentDataset):
    """A JSON Lines file of referents (see the module docstring).

    Args:
        root: the folder holding the file.
        split: the lines whose ``split`` is this (every line if none names a split).
        annotations: the file, relative to ``root``.
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str = "annotations.jsonl",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        path = Path(root) / annotations
        name = f"referring_jsonl/{split}"
        super().__init__(name, [], path.parent, seed, max_expressions, augment, on_bad_sample)
        records = []
        for number, line in enumerate(self._lines(path), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: not valid JSON: {err.msg} (column {err.colno})") from None
                record_split, image, referent = parse_line(record, path.parent, where)
                records.append((record_split, where, (image, referent)))
            except DataError as err:
                self._bad(str(err))
        by_image: dict[Path, list[Referent]] = {}
        for image, referent in select_split(records, split, path, self._bad):
            by_image.setdefault(image, []).append(referent)
        self.items = sorted(by_image.items())
        if not self.items and not self.skipped:
            raise DataError(f"{path}: no referents in split {split!r}")

    @staticmethod
    def _lines(path: Path) -> list[str]:
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"referring_jsonl file not found: {path}") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path} is not UTF-8 text: {err}") from None
