"""Text-prompted tracking of several expressions through a clip, with optional re-detection.

Each expression is one SAM-2 object. On the first frame its text prompt starts its track (EVF-SAM's
zero-shot video inference); SAM-2 propagates every track through the clip.

Re-detection (``redetect_every=K``), the merge rule:

1. A track is *lost* on a frame when its mask there is empty (SAM-2's occlusion head says the object
   is absent, or no pixel passes the threshold).
2. The text prompts of the lost tracks run again, without memory, on every K-th frame and on the frame
   after a track vanished (non-empty on one frame, empty on the next).
3. A lost track takes a non-empty detection: that frame becomes a new conditioning frame of the
   track, as the first frame is, and SAM-2 tracks on from it with all its memories. An empty
   detection changes nothing.
4. Live tracks are never replaced by a detection: SAM-2's memory follows an object more steadily
   than single-frame detection, and replacing it would make masks flicker between look-alikes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from evf.batch import BatchBuilder
from evf.model import EVFSAM
from evf.sam2_compat import CONDITIONING, NON_CONDITIONING, frame_outputs
from evf.video.frames import VideoFrames
from evf.video.tracker import TextVideoPredictor

# A replacement for the text prompt on the frames where objects are prompted: (readable frame index,
# uint8 RGB frame, object rows) -> bool masks [len(rows),H,W], given to SAM-2 as mask prompts (masks
# from another model, or an oracle in tests).
Detector = Callable[[int, np.ndarray, Sequence[int]], np.ndarray]


@dataclass
class FrameMasks:
    """Every object's mask on one frame.

    Attributes:
        position: the frame's index among the readable frames (`VideoFrames.read`).
        frame: the clip index of the frame.
        name: the frame's name (`VideoFrames.names`).
        logits: ``[n,H,W]`` float32 mask logits at the frame's size (CPU).
        masks: ``[n,H,W]`` bool, ``logits > threshold``.
        scores: ``[n]`` SAM-2's probability that each object is visible (its occlusion head).
        prompted: per object, whether its mask here comes from a prompt (the first frame or an
            accepted re-detection) rather than from tracking.
    """

    position: int
    frame: int
    name: str
    logits: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor
    prompted: tuple[bool, ...]


class TextTracker:
    """Tracks ``prompts`` through ``frames`` with ``predictor`` (`build_video_predictor` of ``model``).

    Args:
        model: the EVF model whose encoder and projector turn each expression into its prompt token.
        predictor: SAM-2's video model with the same backend weights.
        frames: the clip.
        prompts: one expression per object.
        threshold: mask logit threshold.
        detector: prompts objects with masks instead of text (see `Detector`).
        offload_state_to_cpu: keep SAM-2's per-frame state in CPU memory (saves accelerator memory).
    """

    def __init__(
        self,
        model: EVFSAM,
        predictor: TextVideoPredictor,
        frames: VideoFrames,
        prompts: Sequence[str],
        threshold: float = 0.0,
        detector: Detector | None = None,
        offload_state_to_cpu: bool = False,
    ) -> None:
        self.model = model
        self.predictor = predictor
        self.frames = frames
        self.prompts = list(prompts)
        self.threshold = threshold
        self.detector = detector
        self.builder = BatchBuilder(model.encoder.preprocessor, model.backend.info.image)
        self.state = predictor.init_frames(frames, offload_state_to_cpu)

    @torch.inference_mode()
    def tokens(self, image: np.ndarray, rows: Sequence[int]) -> torch.Tensor:
        """The prompt tokens ``[len(rows),1,C]`` of the expressions ``rows`` on ``image``."""
        inputs = self.builder.images([image], backend_pixels=False)
        batch = self.builder.text_batch(inputs, [[self.prompts[r] for r in rows]], ["frame"])
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        dtype = next(self.model.encoder.parameters()).dtype
        return self.model.prompt_tokens(
            batch.encoder_pixels.to(dtype), batch.input_ids, batch.attention_mask, batch.image_index
        )

    def prompt(self, k: int, rows: Sequence[int], keep_empty: bool) -> list[int]:
        """Prompt objects ``rows`` on readable frame ``k``; returns the rows whose prompt was kept
        (all with ``keep_empty``, else those with a non-empty mask)."""
        image = self.frames.read(k)
        kept = []
        if self.detector is not None:
            masks = np.asarray(self.detector(k, image, rows), dtype=bool)
            for row, mask in zip(rows, masks, strict=True):
                if keep_empty or mask.any():
                    self.predictor.add_new_mask(self.state, k, row, mask)
                    kept.append(row)
            return kept
        tokens = self.tokens(image, rows)
        for i, row in enumerate(rows):
            out = self.predictor.add_text(self.state, k, row, tokens[i : i + 1])
            if keep_empty or bool((out["pred_masks"] > self.threshold).any()):
                self.predictor.keep_prompt(self.state, k, row, out)
                kept.append(row)
        return kept

    def run(self, redetect_every: int = 0) -> Iterator[FrameMasks]:
        """Masks of every readable frame, in order (see the module's merge rule for re-detection)."""
        if redetect_every < 0:
            raise ValueError(f"redetect_every must be >= 0, got {redetect_every}")
        rows = list(range(len(self.prompts)))
        self.prompt(0, rows, keep_empty=True)
        was_empty = [True] * len(rows)  # the first frame cannot "vanish" an object
        start: int | None = 0
        while start is not None:
            frames = self.predictor.propagate_in_video(self.state, start_frame_idx=start)
            start = None
            for k, _, video_logits in frames:
                yield self._frame_masks(k, video_logits)
                self.predictor.prune_memory(self.state, k)
                empty = [not bool((lg > self.threshold).any()) for lg in video_logits]
                vanished = any(e and not w for e, w in zip(empty, was_empty, strict=True))
                was_empty = empty
                due = (
                    redetect_every
                    and k + 1 < len(self.frames)
                    and ((k + 1) % redetect_every == 0 or vanished)
                )
                lost = [row for row in rows if empty[row]]
                if due and lost and self.prompt(k + 1, lost, keep_empty=False):
                    start = k + 1  # restart propagation there: sam2 encodes the new prompts' memory first
                    break
            frames.close()

    def _frame_masks(self, k: int, video_logits: torch.Tensor) -> FrameMasks:
        outputs = [frame_outputs(self.state, row) for row in range(len(self.prompts))]
        prompted = tuple(k in out[CONDITIONING] for out in outputs)
        kinds = [CONDITIONING if p else NON_CONDITIONING for p in prompted]
        object_logits = torch.cat(
            [out[kind][k]["object_score_logits"].reshape(1) for out, kind in zip(outputs, kinds, strict=True)]
        )
        logits = video_logits[:, 0].float().cpu()
        return FrameMasks(
            position=k,
            frame=self.frames.indices[k],
            name=self.frames.names[k],
            logits=logits,
            masks=logits > self.threshold,
            scores=object_logits.float().sigmoid().cpu(),
            prompted=prompted,
        )


__all__ = ["Detector", "FrameMasks", "TextTracker"]
