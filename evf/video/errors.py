"""The error of a video input the user gave: a missing or unreadable clip, a backend that cannot track."""

from __future__ import annotations


class VideoError(ValueError):
    """A video input problem; the message names the file, frame or option."""


__all__ = ["VideoError"]
