"""The JSON requests of ``evf serve``, validated in the API server before they reach a model worker:
a malformed field, an image that cannot be read or is too large, an unknown ``image_id``, a point or
box outside the image, too many prompts or too long a text is a 422 whose message names the field
(and never costs another request in the same batch its answer)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evf.errors import UsageError
from evf.io import ImageReadError, decode_rgb
from evf.serve.cache import FeatureCache


@dataclass
class Limits:
    """What one request may ask (``evf serve`` options)."""

    max_image_side: int = 4096
    max_prompts: int = 16
    max_text_chars: int = 500
    max_points: int = 16


@dataclass
class Settings:
    limits: Limits
    cache: FeatureCache


_SETTINGS: Settings | None = None


def configure(settings: Settings) -> None:
    """Limits and cache the validators use (set by `evf.serve.server.build_server`)."""
    global _SETTINGS
    _SETTINGS = settings


def settings() -> Settings:
    if _SETTINGS is None:
        raise RuntimeError("evf.serve.schema.configure(...) was not called")
    return _SETTINGS


def decode_image(data: str, field: str, max_side: int | None = None) -> np.ndarray:
    """A base64-encoded PNG/JPEG/... -> uint8 ``[H,W,3]``; ValueError naming ``field`` (also for an
    image over ``max_side`` pixels on a side)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field}: not base64") from None
    try:
        image = decode_rgb(raw, field)
    except (ImageReadError, UsageError) as err:
        raise ValueError(f"{field}: not an image ({err.__cause__ or err})") from None
    if max_side is not None and max(image.shape[:2]) > max_side:
        raise ValueError(f"{field}: {image.shape[1]}x{image.shape[0]} is larger than {max_side} px on a side")
    return image


class PromptIn(BaseModel):
    """One thing to segment (original-image pixels): text, points and/or a box."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    points: list[tuple[float, float]] = Field(default_factory=list)
    point_labels: list[int] = Field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def problems(self, where: str, size: tuple[int, int]) -> list[str]:
        limits, (height, width) = settings().limits, size
        problems = []
        if not ((self.text and self.text.strip()) or self.points or self.box is not None):
            problems.append(f"{where}: needs a text, points or a box")
        if self.text is not None and len(self.text) > limits.max_text_chars:
            problems.append(f"{where}.text: {len(self.text):,} characters, at most {limits.max_text_chars}")
        if len(self.points) > limits.max_points:
            problems.append(f"{where}.points: {len(self.points)} points, at most {limits.max_points}")
        if self.point_labels and len(self.point_labels) != len(self.points):
            problems.append(
                f"{where}.point_labels: {len(self.point_labels)} labels for {len(self.points)} points"
            )
        if set(self.point_labels) - {0, 1}:
            problems.append(
                f"{where}.point_labels: 1 (foreground) or 0 (background), got {self.point_labels}"
            )
        for k, (x, y) in enumerate(self.points):
            if not (0 <= x <= width and 0 <= y <= height):
                problems.append(f"{where}.points[{k}]: ({x:g}, {y:g}) is outside the {width}x{height} image")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
                problems.append(
                    f"{where}.box: {list(self.box)} is not x0<=x1, y0<=y1 inside the {width}x{height} image"
                )
        return problems

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=True)


class ImageRequest(BaseModel):
    """``POST /images``: ``{"image": "<base64 PNG/JPEG>"}``."""

    model_config = ConfigDict(extra="forbid")
    image: str

    @model_validator(mode="after")
    def _readable(self) -> ImageRequest:
        decode_image(self.image, "image", settings().limits.max_image_side)
        return self


class SegmentRequest(BaseModel):
    """``POST /segment``: prompts on an uploaded image (``image_id``) or an inline one (``image``)."""

    model_config = ConfigDict(extra="forbid")
    image_id: str | None = None
    image: str | None = None
    prompts: list[PromptIn]
    threshold: float = 0.0

    @model_validator(mode="after")
    def _valid(self) -> SegmentRequest:
        if (self.image_id is None) == (self.image is None):
            raise ValueError("give either image_id (from POST /images) or image (base64), one of them")
        if self.image is not None:
            size = decode_image(self.image, "image", settings().limits.max_image_side).shape[:2]
        else:
            size = settings().cache.size_of(self.image_id)
            if size is None:
                raise ValueError(
                    f"image_id: {self.image_id!r} is not (or no longer) uploaded: POST /images first"
                )
        limits = settings().limits
        if not self.prompts:
            raise ValueError("prompts: empty; give at least one prompt")
        if len(self.prompts) > limits.max_prompts:
            raise ValueError(f"prompts: {len(self.prompts)}, at most {limits.max_prompts} per request")
        problems = [
            p for k, prompt in enumerate(self.prompts) for p in prompt.problems(f"prompts[{k}]", size)
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


__all__ = ["ImageRequest", "Limits", "PromptIn", "SegmentRequest", "Settings", "configure", "decode_image"]
