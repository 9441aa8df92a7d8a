"""The on-disk embedding store: sharded, memory-mapped, append-only indexes, resumable.

Layout of a store directory (``n`` = number of shards, ``i`` = shard, both zero-padded to 5)::

    shard-<i>-of-<n>.json              header: format, version, the `CacheKey`, dtype, rows, plan digest
    shard-<i>-of-<n>.<feature>.bin     raw rows ``[rows, *shape]`` of one feature, no file header
    shard-<i>-of-<n>.index.jsonl       one line per finished row: {"row", "image", "hash", "size"}

Shard ``i`` is written by one process (`ShardWriter`) and holds the images planned for it, one row
each, in plan order. Rows are written into the memory map, flushed to disk, and only then listed in
the index (and the index fsynced): an index line always points at data that is on disk, a crash
loses at most the rows written since the last flush, and a rerun redoes exactly the rows that are
not in the index. A cut-short last index line is dropped.

`EmbeddingStore` reads every shard header of a directory, checks that all carry the same key and
that each data file has exactly the size its header promises (a truncated or reshaped file is an
error naming it), merges the indexes (pixel hash -> shard and row) and reads rows through memory
maps opened lazily in each process (so the store pickles cheaply into DataLoader workers).

``bf16`` rows are stored as their raw 16-bit patterns (numpy has no bfloat16).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from evf.cache.keys import FORMAT, VERSION, CacheError, CacheKey, CacheMismatchError

log = logging.getLogger(__name__)

StoreDtype = Literal["bf16", "fp16", "fp32"]
TORCH_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_RAW: dict[str, tuple[np.dtype, torch.dtype]] = {
    "bf16": (np.dtype(np.int16), torch.int16),  # bit patterns, viewed as bfloat16 on read
    "fp16": (np.dtype(np.float16), torch.float16),
    "fp32": (np.dtype(np.float32), torch.float32),
}


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def plan_digest(images: Sequence[str]) -> str:
    """SHA-256 of a shard's planned image keys, in order (a rerun must plan the same rows)."""
    return hashlib.sha256("\n".join(images).encode()).hexdigest()


def _data_path(root: Path, stem: str, feature: str) -> Path:
    return root / f"{stem}.{feature}.bin"


def _expected_bytes(rows: int, shape: Sequence[int], dtype: str) -> int:
    return rows * math.prod(shape) * _RAW[dtype][0].itemsize


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: unreadable shard header ({err})") from None
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CacheError(
            f"{path}: not an {FORMAT} v{VERSION} header (format {data.get('format')!r}, "
            f"version {data.get('version')!r})"
        )
    return data


def read_index(path: Path, rows: int, repair: bool = False) -> list[dict[str, Any]]:
    """The finished rows listed in an index file.

    A last line without its newline was cut short by a crash: ignored (and with ``repair``, removed
    from the file so appends continue on a clean line).

    Raises:
        CacheError: a line that is not JSON or points outside ``[0, rows)``.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        log.warning("%s: ignoring an incomplete last line left by an interrupted build", path)
        if repair:
            with open(path, "r+b") as f:
                f.truncate(len(complete))
    entries = []
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
            row = int(entry["row"])
        except (ValueError, KeyError, TypeError):
            raise CacheError(f"{path}:{number}: not an index line: {line[:80]!r}") from None
        if not 0 <= row < rows:
            raise CacheError(f"{path}:{number}: row {row} outside the shard's {rows} rows")
        entries.append(entry)
    return entries


class ShardWriter:
    """Writes one shard; reopening a started shard resumes it.

    Args:
        root: the store directory.
        key: what the features are (must equal the key of a started shard).
        dtype: storage dtype.
        shard: this shard's number.
        num_shards: how many shards the plan has.
        planned: image keys of this shard in row order.

    Raises:
        CacheMismatchError: the shard was started with another key, dtype or plan.
    """

    def __init__(
        self,
        root: Path,
        key: CacheKey,
        dtype: StoreDtype,
        shard: int,
        num_shards: int,
        planned: Sequence[str],
    ) -> None:
        self.root, self.key, self.dtype = Path(root), key, dtype
        self.stem = shard_name(shard, num_shards)
        self.rows = len(planned)
        self.root.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT, "version": VERSION, "key": key.to_json(), "dtype": dtype,
            "shard": shard, "num_shards": num_shards, "rows": self.rows, "plan": plan_digest(planned),
        }  # fmt: skip
        self._start(header)
        self.index_path = self.root / f"{self.stem}.index.jsonl"
        self.done = {e["image"]: int(e["row"]) for e in read_index(self.index_path, self.rows, repair=True)}
        self._maps = {
            name: self._map(_data_path(self.root, self.stem, name), shape)
            for name, shape in key.features.items()
        }
        self._pending: list[dict[str, Any]] = []

    def _start(self, header: dict[str, Any]) -> None:
        path = self.root / f"{self.stem}.json"
        if not path.is_file():
            partial = path.with_name(path.name + ".partial")
            partial.write_text(json.dumps(header, indent=1))
            os.replace(partial, path)  # a header is either complete or absent
            return
        old = _read_json(path)
        problems = CacheKey.from_json(old["key"]).differences(self.key)
        problems += [
            f"{field}: {old.get(field)!r} vs {header[field]!r}"
            for field in ("dtype", "rows", "plan")
            if old.get(field) != header[field]
        ]
        if problems:
            raise CacheMismatchError(
                f"{path} was started with other settings (started vs now):\n  "
                + "\n  ".join(problems)
                + "\nfinish it with the same model, data and --dtype, or delete its files to rebuild it"
            )

    def _map(self, path: Path, shape: Sequence[int]) -> np.memmap | None:
        size = _expected_bytes(self.rows, shape, self.dtype)
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size)  # sparse: only written rows take disk space
        elif path.stat().st_size != size:
            found = path.stat().st_size
            raise CacheError(
                f"{path}: {found} bytes, expected {size}; delete the shard's files to rebuild it"
            )
        if self.rows == 0:
            return None
        return np.memmap(path, dtype=_RAW[self.dtype][0], mode="r+", shape=(self.rows, *shape))

    def write(
        self, row: int, features: Mapping[str, torch.Tensor], image: str, hash_: str, size: Sequence[int]
    ) -> None:
        """Put one image's features (``[*shape]`` each) into ``row``; listed in the index at `flush`."""
        for name, mm in self._maps.items():
            tensor = features[name]
            if tuple(tensor.shape) != mm.shape[1:]:
                raise CacheError(
                    f"{image}: feature {name} is {list(tensor.shape)}, the store holds {list(mm.shape[1:])}"
                )
            raw = tensor.detach().to("cpu", TORCH_DTYPES[self.dtype]).contiguous().view(_RAW[self.dtype][1])
            mm[row] = raw.numpy()
        self._pending.append({"row": row, "image": image, "hash": hash_, "size": [int(s) for s in size]})

    def flush(self) -> None:
        """Data to disk first, then the index lines that point at it."""
        if not self._pending:
            return
        for mm in self._maps.values():
            mm.flush()
        with open(self.index_path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(e) + "\n" for e in self._pending)
            f.flush()
            os.fsync(f.fileno())
        self.done.update({e["image"]: e["row"] for e in self._pending})
        self._pending.clear()


class EmbeddingStore:
    """Reads a store directory (all its shards); see the module docstring.

    Args:
        root: the store directory.

    Raises:
        CacheError: no shards, shards of different keys, a truncated or reshaped data file, or a
            broken index.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        headers = sorted(self.root.glob("shard-*-of-*.json"))
        if not headers:
            raise CacheError(
                f"{self.root}: no embedding cache here (no shard-*.json); build it with "
                "`evf cache-embeddings --config CONFIG --out DIR`"
            )
        self.shards: list[dict[str, Any]] = []
        self.rows: dict[str, tuple[int, int]] = {}  # pixel hash -> (shard position, row)
        for path in headers:
            self._add_shard(path)
        self._maps: dict[tuple[int, str], np.memmap] = {}

    def _add_shard(self, path: Path) -> None:
        header = _read_json(path)
        key = CacheKey.from_json(header["key"])
        if self.shards and key != self.key:
            diff = "\n  ".join(self.key.differences(key))
            raise CacheMismatchError(
                f"{path} holds features of another model than {self.shards[0]['path']} "
                f"(first vs this):\n  {diff}\nremove the stale shards"
            )
        if self.shards and header["dtype"] != self.dtype:
            first = self.shards[0]["path"]
            raise CacheMismatchError(f"{path}: dtype {header['dtype']} but {first} has {self.dtype}")
        self.key, self.dtype = key, header["dtype"]
        stem, rows = path.name[: -len(".json")], int(header["rows"])
        for name, shape in key.features.items():
            data = _data_path(self.root, stem, name)
            expected = _expected_bytes(rows, shape, self.dtype)
            found = data.stat().st_size if data.is_file() else None
            if found != expected:
                raise CacheError(
                    f"{data}: {'missing' if found is None else f'{found} bytes'}, but its header promises "
                    f"{rows} rows of {name} {list(shape)} in {self.dtype} = {expected} bytes: the file is "
                    "truncated, reshaped or from another build; delete the shard and rebuild it"
                )
        position = len(self.shards)
        self.shards.append({"path": path, "stem": stem, "rows": rows})
        for entry in read_index(self.root / f"{stem}.index.jsonl", rows):
            self.rows.setdefault(entry["hash"], (position, int(entry["row"])))

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, hash_: str) -> bool:
        return hash_ in self.rows

    def check(self, expected: CacheKey) -> None:
        """Raise `CacheMismatchError` naming every difference between this store and ``expected``."""
        if self.key == expected:
            return
        diff = "\n  ".join(self.key.differences(expected))
        raise CacheMismatchError(
            f"the embedding cache {self.root} was built for other image features than this model "
            f"computes (cache vs model):\n  {diff}\nrebuild it with `evf cache-embeddings` for this config"
        )

    def read(self, hash_: str, image: str = "") -> dict[str, torch.Tensor]:
        """The features of the image whose `pixel_hash` is ``hash_``, ``[*shape]`` each, in the store dtype.

        Args:
            hash_: the image's pixel hash.
            image: its name, for the error message.

        Raises:
            CacheError: the image is not in the store.
        """
        if hash_ not in self.rows:
            raise CacheError(self._missing(hash_, image))
        position, row = self.rows[hash_]
        out = {}
        for name in self.key.features:
            raw = torch.from_numpy(np.array(self._map(position, name)[row]))
            out[name] = raw.view(TORCH_DTYPES[self.dtype])
        return out

    def _missing(self, hash_: str, image: str) -> str:
        return (
            f"image {image or '?'} (pixel hash {hash_}) is not in the embedding cache {self.root}: it "
            "changed since the cache was built, or the cache was built for other datasets or splits; "
            "rebuild it with `evf cache-embeddings` for this config"
        )

    def _map(self, position: int, name: str) -> np.memmap:
        if (position, name) not in self._maps:
            shard = self.shards[position]
            shape = (shard["rows"], *self.key.features[name])
            path = _data_path(self.root, shard["stem"], name)
            self._maps[position, name] = np.memmap(path, dtype=_RAW[self.dtype][0], mode="r", shape=shape)
        return self._maps[position, name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened in each process
        return state
