"""What identifies cached image features: the `CacheKey` of a store and the hash of each image.

A store holds the features of one image encoder applied with one preprocessing. Its `CacheKey`
names them: the backend (registry name and options), the hash of the image-encoder weights
(`SamBackend.image_encoder_hash`), the preprocessing (the backend's `ImageSpec`, field by field) and
the shape of each feature. A reader compares the key of the store with the key of the model that
wants the features and refuses any difference, naming the fields that differ.

Each image is identified by `pixel_hash`, a hash of its decoded pixels: the features are looked up
by what the image *is*, so a changed file, a different decoder or another EXIF rotation cannot get
stale features, and two datasets that read the same picture share one entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from evf.sam_backends import SamBackend

FORMAT = "evf-embedding-cache"
VERSION = 1
NOT_IDENTITY = ("checkpoint", "image_encoder")
"""Backend options that are not part of the key: the checkpoint enters through the weights hash,
and whether the image encoder is built does not change what it computes."""


class CacheError(RuntimeError):
    """An embedding cache is missing, incomplete or corrupted; the message names the file."""


class CacheMismatchError(CacheError):
    """A store was built for another backend, weights, preprocessing or feature layout."""


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, so a key compares equal to its reloaded self."""
    return json.loads(json.dumps(value, sort_keys=True))


@dataclass(frozen=True)
class CacheKey:
    """Everything the cached features depend on, apart from the image itself.

    Attributes:
        backend: registered backend name, e.g. ``sam_vit_h``.
        backend_options: the backend's factory options (``backend_kwargs``) without `NOT_IDENTITY`.
        weights: SHA-256 of the image-encoder tensors (`SamBackend.image_encoder_hash`).
        preprocessing: the backend's `ImageSpec` as a dict.
        features: shape of one image's features per name, e.g. ``{"image_embeddings": [256, 64, 64]}``.
    """

    backend: str
    backend_options: dict[str, Any]
    weights: str
    preprocessing: dict[str, Any]
    features: dict[str, list[int]]

    def to_json(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheKey:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise CacheError(f"cache key lacks {missing}")
        return cls(**{n: _plain(data[n]) for n in names})

    def differences(self, other: CacheKey) -> list[str]:
        """One line per differing field, ``field: <self> (store) vs <other> (model)``-style values."""
        lines = []
        mine, theirs = self.to_json(), other.to_json()
        for name in mine:
            a, b = mine[name], theirs[name]
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                for sub in sorted(set(a) | set(b)):
                    x, y = a.get(sub, "<absent>"), b.get(sub, "<absent>")
                    if x != y:
                        lines.append(f"{name}.{sub}: {x!r} vs {y!r}")
            else:
                lines.append(f"{name}: {a!r} vs {b!r}")
        return lines


def backend_options(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The identity-relevant factory options of a backend (`NOT_IDENTITY` removed)."""
    return _plain({k: v for k, v in (kwargs or {}).items() if k not in NOT_IDENTITY})


def cache_key(backend: SamBackend, name: str, options: Mapping[str, Any] | None = None) -> CacheKey:
    """The key of the features ``backend`` computes (works without its image encoder when it was
    built from a checkpoint, whose image-encoder tensors were hashed while loading).

    Args:
        backend: the built backend.
        name: its registered name.
        options: the factory options it was built with (``backend_kwargs``).
    """
    return CacheKey(
        backend=name,
        backend_options=backend_options(options),
        weights=backend.image_encoder_hash(),
        preprocessing=_plain(asdict(backend.info.image)),
        features={k: list(v) for k, v in backend.feature_shapes().items()},
    )


def pixel_hash(image: np.ndarray) -> str:
    """128-bit BLAKE2b of a uint8 ``[H,W,3]`` image: its shape and its pixels (about 1 ms per
    megapixel, far less than decoding the file)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(image.shape)).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()
