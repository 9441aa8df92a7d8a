"""Text-prompted video segmentation from Python (`predict_video`) and its output files.

For a clip and one expression per object, `predict_video` writes to ``output``:

* ``masks/<frame>_<k>.png``: object ``k``'s mask on clip frame ``<frame>`` (5 digits), 0/255;
* ``masks.jsonl``: one line per (frame, object): ``frame`` (clip index), ``name`` (frame file name),
  ``object`` (``k``), ``prompt``, ``score`` (SAM-2's probability that the object is visible),
  ``prompted`` (the mask comes from a text prompt: the first frame or a re-detection), ``area`` and
  ``rle`` (COCO RLE, as ``evf predict``);
* ``overlay.mp4``: the clip with each object's mask filled in its colour, captioned (OpenCV, mp4v);
* ``failures.json``: frames that could not be read (index, name, error), when any;
* ``metrics.json``: J, F and J&F per object and for the clip, with ``ground_truth`` (`Annotations`).

    report = evf.predict_video(model, "clip.mp4", ["the man on the left"], output="out",
                               memory="checkpoints/evf-sam2")
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from evf.model import EVFSAM
from evf.prediction import encode_rle
from evf.video.errors import VideoError
from evf.video.frames import VideoFrames
from evf.video.metrics import Annotations, ClipScores
from evf.video.track import Detector, FrameMasks, TextTracker
from evf.video.tracker import build_video_predictor, read_memory_weights
from evf.visualize import OBJECT_COLOURS, captioned, overlay

DEFAULT_FPS = 24.0  # overlay frame rate for a folder of frames


@dataclass
class VideoReport:
    """What `predict_video` did.

    Attributes:
        records: one per (frame, object), as the lines of ``masks.jsonl``.
        failures: frames that could not be read.
        metrics: J / F / J&F (`ClipScores.summary`) with ground truth, else None.
        frames: how many frames were segmented.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    frames: int = 0


class VideoOutput:
    """Writes the files of one clip (see the module docstring); ``output=None`` keeps records only."""

    def __init__(
        self, output: Path | None, prompts: Sequence[str], size: tuple[int, int], fps: float
    ) -> None:
        self.output, self.prompts = output, list(prompts)
        self.colours = list(OBJECT_COLOURS.items())
        self.captions = [f"{self.colours[k % len(self.colours)][0]}: {p}" for k, p in enumerate(self.prompts)]
        self.lines: Any = None
        self.video: cv2.VideoWriter | None = None
        if output is None:
            return
        (output / "masks").mkdir(parents=True, exist_ok=True)
        self.lines = (output / "masks.jsonl").open("w")
        height, width = size
        caption_height = captioned(np.zeros((height, width, 3), np.uint8), self.captions, width).shape[0]
        self.video = cv2.VideoWriter(
            str(output / "overlay.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, caption_height)
        )
        if not self.video.isOpened():
            raise VideoError(f"OpenCV cannot write {output / 'overlay.mp4'} (mp4v)")

    def add(self, result: FrameMasks, image: np.ndarray) -> list[dict[str, Any]]:
        """Record (and write) one frame; returns its records."""
        records = []
        masks = result.masks.numpy()
        for k, (prompt, mask) in enumerate(zip(self.prompts, masks, strict=True)):
            record = {
                "frame": result.frame,
                "name": result.name,
                "object": k,
                "prompt": prompt,
                "score": float(result.scores[k]),
                "prompted": result.prompted[k],
                "area": int(mask.sum()),
                "rle": encode_rle(mask),
            }
            records.append(record)
            if self.output is not None:
                path = self.output / "masks" / f"{result.frame:05d}_{k}.png"
                Image.fromarray(mask.astype(np.uint8) * 255).save(path)
                self.lines.write(json.dumps(record) + "\n")
        if self.video is not None:
            drawn = image
            for k, mask in enumerate(masks):
                drawn = overlay(drawn, mask, colour=self.colours[k % len(self.colours)][1])
            frame = captioned(drawn, self.captions, width=image.shape[1])
            self.video.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        return records

    def finish(self, report: VideoReport) -> None:
        if self.output is None:
            return
        self.lines.close()
        self.video.release()
        if report.failures:
            (self.output / "failures.json").write_text(json.dumps(report.failures, indent=2))
        if report.metrics is not None:
            (self.output / "metrics.json").write_text(json.dumps(report.metrics, indent=2))


@torch.no_grad()
def predict_video(
    model: EVFSAM,
    video: str | Path,
    prompts: str | Sequence[str],
    output: str | Path | None = None,
    *,
    memory: str | Path | dict[str, torch.Tensor] | None = None,
    redetect_every: int = 0,
    ground_truth: str | Path | None = None,
    threshold: float = 0.0,
    offload_state_to_cpu: bool = False,
    fps: float | None = None,
    detector: Detector | None = None,
    seed: int = 0,
) -> VideoReport:
    """Segment each expression through a clip with ``model`` (a SAM-2 backend) and SAM-2's tracker.

    Args:
        model: the EVF model; its device is used.
        video: a folder of frames or a video file.
        prompts: one expression per object; each is tracked as its own object.
        output: folder for the files (module docstring); None writes nothing.
        memory: SAM-2's memory-module weights: a released EVF-SAM2 directory, an official sam2
            checkpoint, or a state dict (`read_memory_weights`); None initialises them randomly from
            ``seed`` (tests and timing only: tracking is then meaningless).
        redetect_every: re-run the text prompts of lost objects every this many frames and after an
            object vanished (`evf.video.track`'s merge rule); 0: first frame only, as EVF-SAM.
        ground_truth: folder of DAVIS-style annotation PNGs (`Annotations`): adds J / F / J&F.
        threshold: mask logit threshold.
        offload_state_to_cpu: keep SAM-2's per-frame state in CPU memory.
        fps: frame rate of ``overlay.mp4`` (default: the video's, or 24 for a folder).
        detector: prompt with masks instead of text (`evf.video.track.Detector`).
        seed: seed of randomly initialised memory modules.

    Returns:
        The records, the skipped frames and the metrics.

    Raises:
        VideoError: no prompt, a missing or unreadable clip, a missing ground-truth folder, or a
            backend that is not SAM-2.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(p.strip() for p in prompts):
        raise VideoError("predict-video needs at least one non-empty prompt")
    frames = VideoFrames(video)
    annotations = None if ground_truth is None else Annotations(ground_truth, len(prompts))
    if isinstance(memory, str | Path):
        memory = read_memory_weights(memory)
    predictor = build_video_predictor(model, memory, seed=seed)
    model.eval()
    tracker = TextTracker(model, predictor, frames, prompts, threshold, detector, offload_state_to_cpu)
    out_dir = None if output is None else Path(output)
    writer = VideoOutput(out_dir, prompts, frames.size, fps or frames.fps or DEFAULT_FPS)
    report = VideoReport(failures=list(frames.failures))
    scores = ClipScores(len(prompts))
    for result in tracker.run(redetect_every):
        image = frames.read(result.position)
        report.records += writer.add(result, image)
        report.frames += 1
        labels = None if annotations is None else annotations.labels(result.name, frames.size)
        if labels is not None:
            scores.add(result.frame, result.masks.numpy(), labels)
    if annotations is not None:
        report.metrics = scores.summary()
        for k, entry in enumerate(report.metrics["per_object"]):
            entry["prompt"] = prompts[k]
    writer.finish(report)
    return report


__all__ = ["VideoOutput", "VideoReport", "predict_video"]
