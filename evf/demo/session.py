"""The demo's work without the web page: one visitor's image, prompts and results.

A `DemoSession` keeps one image encoded (`evf.Predictor.set_image` runs once per image, so a new
prompt on it costs decoder time only), turns the page's fields into `Prompt` s and checks them
against the image, answers them, and writes the downloads with `evf.prediction.PredictionWriter`
(the mask PNGs and ``predictions.json`` with COCO RLE that ``evf predict`` writes). `evf.demo.app`
wraps it in Gradio; nothing here imports Gradio.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evf.datamodules.common import SEMANTIC_PREFIX, semantic_prompt
from evf.decode import Prediction
from evf.inputs import parse_box, parse_point, prompts_with_geometry
from evf.io import ImageReadError, read_rgb
from evf.model import EVFSAM
from evf.prediction import PredictionWriter
from evf.predictor import Predictor
from evf.prompts import Prompt

MAX_EXPRESSIONS = 16  # per request: each adds a multimodal-encoder row and a mask to draw
MAX_EXPRESSION_CHARS = 500  # referring expressions are a sentence; BEIT-3 reads 128 tokens at most


class DemoInputError(ValueError):
    """What the visitor gave cannot be answered; the message says what and where."""


@dataclass(frozen=True)
class DemoResult:
    """The answer to one request.

    Attributes:
        prompts: the prompts asked, in order.
        prediction: their masks, logits and scores, on the CPU.
        presence: per prompt, the model's presence probability (1.0 for models without that head).
        encode_ms: the image encoder's time for this image (at upload or in this request).
        encoded_now: whether this request ran the image encoder.
        decode_ms: prompts -> masks on the CPU (multimodal encoder, mask decoder, postprocessing).
        files: ``predictions.json``, then one mask PNG per prompt.
    """

    prompts: list[Prompt]
    prediction: Prediction
    presence: list[float]
    encode_ms: float
    encoded_now: bool
    decode_ms: float
    files: list[Path]


class DemoSession:
    """One visitor's image state: the encoded image, its name and a half-drawn box.

    Args:
        model: the model (shared by every session; this object holds only per-image tensors).
        threshold: logit threshold of the masks.
    """

    def __init__(self, model: EVFSAM, threshold: float = 0.0, dtype: torch.dtype | None = None) -> None:
        self.predictor = Predictor(model, threshold, dtype=dtype)
        self.source: Path | None = None
        self.image: np.ndarray | None = None
        self.encode_ms = 0.0
        self.pending_corner: tuple[int, int] | None = None  # first click of a box
        self._downloads = tempfile.TemporaryDirectory(prefix="evf-demo-")  # removed with the session
        self._requests = 0

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else "image"

    def load(self, path: str | Path | None, keep_current: bool = False) -> bool:
        """Read the image file at ``path`` and encode it, unless it is the one already encoded (the
        same path: Gradio keeps each upload in a folder named by the hash of its content). Returns
        whether the image encoder ran. With ``keep_current``, no path keeps the image already
        encoded (the page's upload field is emptied after a bad upload; the canvas still shows it).

        Raises:
            DemoInputError: no file (and no image kept), or a file that is not a readable image (the
                old image stays).
        """
        if path is None and keep_current and self.image is not None:
            return False
        if path is None:
            raise DemoInputError("upload an image first")
        path = Path(path)
        if path == self.source:
            return False
        try:
            image = read_rgb(path)
        except ImageReadError as err:
            reason = str(err.__cause__ or "not found").replace(str(path), path.name)  # no server paths
            raise DemoInputError(f"cannot read {path.name} as an image ({reason})") from err
        start = time.perf_counter()
        self.predictor.set_image(image)
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize()  # the time of the encoder, not of its launch
        self.encode_ms = (time.perf_counter() - start) * 1000
        self.source, self.image, self.pending_corner = path, image, None
        return True

    def prompts(self, expressions: str, semantic: bool, points: str, box: str) -> list[Prompt]:
        """The page's fields as prompts: one per expression line (``"[semantic] "`` put before each
        when ``semantic``), each joined by the points (``x,y[,label]`` per line) and the box
        (``x0,y0,x1,y1``); without expressions the points and box are one prompt of their own.

        Raises:
            DemoInputError: nothing to segment, too many or too long expressions, a malformed point
                or box, or one that is not inside the image.
        """
        texts = [line.strip() for line in (expressions or "").splitlines() if line.strip()]
        if len(texts) > MAX_EXPRESSIONS:
            raise DemoInputError(
                f"{len(texts)} expressions: the demo answers at most {MAX_EXPRESSIONS} at once"
            )
        for n, text in enumerate(texts, 1):
            if len(text) > MAX_EXPRESSION_CHARS:
                raise DemoInputError(
                    f"expression {n} is {len(text):,} characters long: the demo takes at most "
                    f"{MAX_EXPRESSION_CHARS} (a referring expression is a phrase or a sentence)"
                )
        if semantic:
            texts = [t if t.startswith(SEMANTIC_PREFIX) else semantic_prompt(t) for t in texts]
        point_lines = [line.strip() for line in (points or "").splitlines() if line.strip()]
        try:
            prompts = prompts_with_geometry(texts, point_lines, (box or "").strip() or None)
        except ValueError as err:
            raise DemoInputError(str(err)) from err
        if not prompts:
            raise DemoInputError("nothing to segment: type an expression, click a point or give a box")
        self._check_inside(prompts[0])  # every prompt carries the same points and box
        return prompts

    def _check_inside(self, prompt: Prompt) -> None:
        if self.image is None:
            raise DemoInputError("upload an image first")
        h, w = self.image.shape[:2]
        where = f"the {w}x{h} image (x in 0..{w}, y in 0..{h})"
        for x, y in prompt.points:
            if not (0 <= x <= w and 0 <= y <= h):
                raise DemoInputError(f"point {x:g},{y:g} is outside {where}")
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            if not (0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h):
                raise DemoInputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is not inside {where}")

    def segment(self, prompts: list[Prompt], encoded_now: bool = False) -> DemoResult:
        """Masks for ``prompts`` on the current image, and the files to download."""
        start = time.perf_counter()
        prediction = self.predictor.predict(prompts).to("cpu")
        decode_ms = (time.perf_counter() - start) * 1000  # .to("cpu") waited for the device
        shown_presence = prediction.presence.tolist()  # 1.0 for models without a presence head
        files = self._write(prompts, prediction)
        return DemoResult(prompts, prediction, shown_presence, self.encode_ms, encoded_now, decode_ms, files)

    def _write(self, prompts: list[Prompt], prediction: Prediction) -> list[Path]:
        """One folder per request; the previous one goes (Gradio has copied its files by then)."""
        root = Path(self._downloads.name)
        shutil.rmtree(root / str(self._requests), ignore_errors=True)
        self._requests += 1
        writer = PredictionWriter(root / str(self._requests))
        writer.start()
        writer.add(self.image, self.name, prompts, prediction)
        writer.finish()
        return [writer.output / "predictions.json"] + [writer.output / r["mask"] for r in writer.records]

    def click(self, x: int, y: int, mode: str, points: str, box: str) -> tuple[str, str]:
        """A click at pixel ``x, y``: a point line added to ``points`` (``mode`` ``foreground`` or
        ``background``), or a box corner (``box``): the first click is kept, the second makes
        ``box`` the rectangle between them. Returns the new ``points`` and ``box`` texts."""
        if mode == "box":
            if self.pending_corner is None:
                self.pending_corner = (x, y)
                return points, box
            (x0, y0), self.pending_corner = self.pending_corner, None
            return points, f"{min(x0, x)},{min(y0, y)},{max(x0, x)},{max(y0, y)}"
        label = 1 if mode == "foreground" else 0
        return f"{points.rstrip()}\n{x},{y},{label}".lstrip(), box


def drawn_geometry(points: str, box: str) -> tuple[list[tuple[tuple[float, float], int]], tuple | None]:
    """The well-formed points and box of the page's fields, for drawing (malformed lines are left
    out here; `DemoSession.prompts` reports them)."""
    parsed = []
    for line in (points or "").splitlines():
        try:
            parsed.append(parse_point(line))
        except ValueError:
            continue
    try:
        rect = parse_box(box) if (box or "").strip() else None
    except ValueError:
        rect = None
    return parsed, rect


__all__ = ["DemoInputError", "DemoResult", "DemoSession", "drawn_geometry"]
