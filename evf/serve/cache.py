"""The server's image-feature cache: one image's encoded state per file, keyed by the pixels' hash,
shared by every process of ``evf serve`` (the API servers that validate requests and the inference
workers of ``/images`` and ``/segment``), bounded in entries with least-recently-used eviction.

An entry is ``<id>.npz`` (the backend's image features, the encoder's pixels, the sizes) beside
``<id>.json`` (the image's size, what request validation reads). Writes go to a temporary name and
are renamed into place, so a reader never sees half an entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ImageState:
    """What `evf.serve` keeps of an encoded image."""

    features: dict[str, np.ndarray]  # each [1,...]
    encoder_pixels: np.ndarray  # [1,3,E,E]
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class FeatureCache:
    """At most ``max_entries`` encoded images in ``directory``."""

    def __init__(self, directory: str | Path, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        # This process's copies of the entries it read or wrote, valid while the file is there.
        self._memory: OrderedDict[str, ImageState] = OrderedDict()

    def _path(self, image_id: str, suffix: str) -> Path:
        if not image_id or not all(c in "0123456789abcdef" for c in image_id):
            raise KeyError(image_id)
        return self.directory / f"{image_id}{suffix}"

    def size_of(self, image_id: str) -> tuple[int, int] | None:
        """``(height, width)`` of a cached image, or None."""
        try:
            return tuple(json.loads(self._path(image_id, ".json").read_text())["size"])
        except (KeyError, FileNotFoundError, ValueError):
            return None

    def get(self, image_id: str) -> ImageState | None:
        try:
            path = self._path(image_id, ".npz")
            os.utime(path)  # recently used (and still there: another process may have evicted it)
            if image_id in self._memory:
                self._memory.move_to_end(image_id)
                return self._memory[image_id]
            with np.load(path) as data:
                arrays = {k: data[k] for k in data.files}
        except (KeyError, FileNotFoundError, ValueError, OSError):
            self._memory.pop(image_id, None)
            return None
        sizes = [int(v) for v in arrays.pop("__sizes__")]
        state = ImageState(arrays, arrays.pop("__encoder_pixels__"), tuple(sizes[:2]), tuple(sizes[2:]))
        self._remember(image_id, state)
        return state

    def _remember(self, image_id: str, state: ImageState) -> None:
        self._memory[image_id] = state
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def put(self, image_id: str, state: ImageState) -> None:
        arrays = {**state.features, "__encoder_pixels__": state.encoder_pixels,
                  "__sizes__": np.array([*state.input_size, *state.original_size])}  # fmt: skip
        for suffix, write in (
            (".npz", lambda f: np.savez(f, **arrays)),
            (".json", lambda f: f.write(json.dumps({"size": list(state.original_size)}).encode())),
        ):
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as f:
                write(f)
            os.replace(f.name, self._path(image_id, suffix))
        self._remember(image_id, state)
        self._evict()

    def __len__(self) -> int:
        return len(list(self.directory.glob("*.npz")))

    def _evict(self) -> None:
        entries = sorted(self.directory.glob("*.npz"), key=lambda p: p.stat().st_mtime)
        for path in entries[: max(0, len(entries) - self.max_entries)]:
            for stale in (path, path.with_suffix(".json")):
                stale.unlink(missing_ok=True)


__all__ = ["FeatureCache", "ImageState"]
