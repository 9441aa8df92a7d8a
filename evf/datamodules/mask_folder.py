"""``mask_folder``: mask images with a CSV of phrases, one expression per row.

    image,mask,expression
    images/0001.jpg,masks/0001_mug.png,the red mug
    images/0001.jpg,masks/0001_mug.png,mug on the left
    images/0001.jpg,masks/0001_plate.png,the blue plate

Paths are relative to the CSV's folder; a mask is any image whose non-zero pixels are the target.
Rows sharing an image and a mask are one referent with several expressions; rows sharing an image
form one item (`evf.datamodules.referents`). An optional ``split`` column selects rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

from evf.datamodules.common import DataError, OnBadSample
from evf.datamodules.referents import Referent, ReferentDataset, select_split

COLUMNS = ("image", "mask", "expression")


def parse_row(row: dict, folder: Path, where: str) -> tuple[str | None, Path, Path, str]:
    """``(split, image, mask, expression)`` of one CSV row; a `DataError` names ``where`` and the column."""
    if None in row:
        raise DataError(f"{where}: more cells than the header has columns")
    for column in COLUMNS:
        if row.get(column) is None:
            raise DataError(f"{where}: missing column {column!r}")
        if not row[column].strip():
            raise DataError(f"{where}: empty {column!r}")
    split = row.get("split")
    split = split.strip() if split is not None and split.strip() else None
    return split, folder / row["image"].strip(), folder / row["mask"].strip(), row["expression"].strip()


class MaskFolderDataset(ReferentDataset):
    """Mask images listed in a CSV with their expressions (see the module docstring).

    Args:
        root: the folder holding the CSV.
        split: the rows whose ``split`` is this (every row without a ``split`` column).
        annotations: the CSV, relative to ``root``.
        seed, max_expressions, augment, on_bad_sample: see `evf.datamodules.common.FileDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        annotations: str = "annotations.csv",
        seed: int = 0,
        max_expressions: int | None = 3,
        augment: bool = False,
        on_bad_sample: OnBadSample = "error",
    ) -> None:
        path = Path(root) / annotations
        super().__init__(
            f"mask_folder/{split}", [], path.parent, seed, max_expressions, augment, on_bad_sample
        )
        records = []
        for where, row in self._rows(path):
            try:
                row_split, image, mask, expression = parse_row(row, path.parent, where)
            except DataError as err:
                self._bad(str(err))
                continue
            records.append((row_split, where, (image, mask, expression, where)))
        referents: dict[Path, dict[Path, list[tuple[str, str]]]] = {}
        for image, mask, expression, where in select_split(records, split, path, self._bad):
            referents.setdefault(image, {}).setdefault(mask, []).append((expression, where))
        self.items = [
            (image, [Referent(tuple(e for e, _ in rows), mask, rows[0][1]) for mask, rows in masks.items()])
            for image, masks in sorted(referents.items())
        ]
        if not self.items and not self.skipped:
            raise DataError(f"{path}: no rows in split {split!r}")

    @staticmethod
    def _rows(path: Path) -> list[tuple[str, dict]]:
        """``(<file>:<line>, row)`` per data row, after checking the header."""
        try:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(
                        f"{path}: the header lacks column(s) {missing}; expected {','.join(COLUMNS)}[,split]"
                    )
                return [(f"{path}:{reader.line_num}", row) for row in reader]
        except FileNotFoundError:
            raise DataError(f"mask_folder CSV not found: {path}") from None
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{path} is not a readable CSV: {err}") from None
