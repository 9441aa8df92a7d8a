"""A clip's frames, read lazily: a folder of images or a video file (OpenCV).

Opening a clip scans it once, decoding every frame and keeping none, so that a frame that cannot be
read (or differs in size from the first readable one) is reported with its index and skipped before
tracking starts; afterwards frames are decoded one at a time when asked for, and only the last one
is kept. Memory therefore does not grow with the clip's length. Frame images are read as stored
(no EXIF rotation), as sam2's own frame loader reads them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from evf.io import IMAGE_SUFFIXES, ImageReadError, read_rgb
from evf.video.errors import VideoError

log = logging.getLogger(__name__)


def _frame_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in frame order: numerically when every stem is a number
    (``1.jpg, 2.jpg, 10.jpg``), else by name."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return sorted(files)


class VideoFrames:
    """The readable frames of a clip.

    Args:
        path: a folder of frame images, or a video file OpenCV can decode (MP4, AVI, ...).

    Attributes:
        indices: the clip index of each readable frame (readable frame ``k`` is frame
            ``indices[k]`` of the clip).
        names: each readable frame's name (its file name; ``00012`` for frame 12 of a video file).
        size: ``(height, width)`` of every readable frame.
        fps: frames per second of a video file; None for a folder.
        failures: one ``{"frame", "name", "error"}`` per frame that was skipped.

    Raises:
        VideoError: the path does not exist, is not a video, or has no readable frame.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.indices: list[int] = []
        self.names: list[str] = []
        self.failures: list[dict] = []
        self.fps: float | None = None
        self._files: list[Path] = []
        self._capture: cv2.VideoCapture | None = None
        self._next = 0  # index the open capture decodes next
        self._last: tuple[int, np.ndarray] | None = None
        if not self.path.exists():
            raise VideoError(f"video not found: {self.path}")
        shapes = self._scan_folder() if self.path.is_dir() else self._scan_file()
        if not self.indices:
            detail = f": {self.failures[0]['error']}" if self.failures else ""
            raise VideoError(f"{self.path}: no readable frame ({len(self.failures)} failed{detail})")
        self.size = shapes[0]
        self._drop_other_sizes(shapes)
        for failure in self.failures:
            log.warning("skipped frame %d (%s): %s", failure["frame"], failure["name"], failure["error"])

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, k: int) -> np.ndarray:
        """Readable frame ``k`` as uint8 ``[H,W,3]`` RGB."""
        index = self.indices[k]
        if self._last is None or self._last[0] != index:
            image = read_rgb(self._files[index], exif_transpose=False) if self._files else self._decode(index)
            self._last = (index, image)
        return self._last[1]

    def _fail(self, index: int, name: str, error: str) -> None:
        self.failures.append({"frame": index, "name": name, "error": error})

    def _scan_folder(self) -> list[tuple[int, int]]:
        self._files = _frame_files(self.path)
        if not self._files:
            raise VideoError(f"{self.path}: no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        shapes = []
        for index, file in enumerate(self._files):
            try:
                shapes.append(read_rgb(file, exif_transpose=False).shape[:2])
            except ImageReadError as err:
                self._fail(index, file.name, str(err))
                continue
            self.indices.append(index)
            self.names.append(file.name)
        return shapes

    def _scan_file(self) -> list[tuple[int, int]]:
        capture = self._open()
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        shapes, index = [], 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            shapes.append(frame.shape[:2])
            self.indices.append(index)
            self.names.append(f"{index:05d}")
            index += 1
        capture.release()
        for missing in range(index, expected):  # the container lists frames the decoder could not read
            self._fail(missing, f"{missing:05d}", "could not be decoded")
        return shapes

    def _drop_other_sizes(self, shapes: list[tuple[int, int]]) -> None:
        keep = [k for k, shape in enumerate(shapes) if shape == self.size]
        for k, shape in enumerate(shapes):
            if shape != self.size:
                h, w = shape
                self._fail(
                    self.indices[k], self.names[k], f"is {w}x{h}, the clip is {self.size[1]}x{self.size[0]}"
                )
        self.indices = [self.indices[k] for k in keep]
        self.names = [self.names[k] for k in keep]
        self.failures.sort(key=lambda f: f["frame"])

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise VideoError(
                f"cannot open video {self.path}: not a folder of frames or a video OpenCV decodes"
            )
        return capture

    def _decode(self, index: int) -> np.ndarray:
        """Frame ``index`` of the video file, decoding forward from the open capture (reopened to go back)."""
        if self._capture is None or index < self._next:
            if self._capture is not None:
                self._capture.release()
            self._capture, self._next = self._open(), 0
        while self._next < index:
            self._capture.grab()
            self._next += 1
        ok, frame = self._capture.read()
        self._next += 1
        if not ok:
            raise VideoError(f"{self.path}: frame {index} could not be decoded on a second read")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


__all__ = ["VideoFrames"]
