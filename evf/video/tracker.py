"""SAM-2's own video predictor, prompted with EVF's text token: EVF-SAM2's zero-shot video inference.

EVF-SAM's ``inference_video.py`` projects the expression on the first frame to one prompt token and
hands it to a patched ``SAM2VideoPredictor.add_new_text``: the frame is decoded like a first click
(no memory, ``multimask_output`` with the best predicted IoU kept) with the token as the *only*
sparse prompt, and ``propagate_in_video`` tracks the mask through the clip. We subclass sam2's
predictor instead of patching it: `TextPromptEncoder` is sam2's ``PromptEncoder`` that, while a
token is set, puts the token where ``SAM2Base._forward_sam_heads`` would put its padding point, and
`TextVideoPredictor.add_text` runs sam2's single-frame inference under it. Everything else
(memory, propagation, postprocessing) is sam2's code, unchanged; the sam2 internals this takes
(private methods, the inference state's layout) are named in `evf.sam2_compat` only.

The model is sam2's full ``SAM2Base`` built from the variant's own config file
(`evf.sam_backends.sam2_build.video_config`) with `build_sam2_video_predictor`'s options; the image path,
prompt encoder and mask decoder take our backend's weights and the memory modules come from a
released EVF-SAM2 directory or an official sam2 checkpoint (`read_memory_weights`), or stay randomly
initialised from a seed (tests).

Frames are read lazily (`VideoFrames`): sam2 asks for one frame at a time, so a long clip never
sits in memory; `prune_memory` drops per-frame outputs that memory attention can no longer read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.sam2_video_predictor import SAM2VideoPredictor

from evf.checkpoint import CheckpointError, CheckpointFormat, Rule, StateDict, load_strict, read_state_dict
from evf.model import EVFSAM
from evf.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from evf.pretrained import BACKEND_PREFIX, read_release_state
from evf.sam2_compat import (
    NON_CONDITIONING,
    PADDING_POINT_LABEL,
    all_frame_outputs,
    decode_conditioning_frame,
    is_tracked,
    keep_conditioning_output,
    new_inference_state,
    object_index,
    prompt_encoder,
    set_prompt_encoder_class,
    use_cpu_connected_components,
)
from evf.sam_backends.sam2 import Sam2Backend
from evf.sam_backends.sam2_build import video_config
from evf.sam_backends.sam2_checkpoints import RELEASE_LAYOUT, SAM2_CHECKPOINT
from evf.video.errors import VideoError
from evf.video.frames import VideoFrames

log = logging.getLogger(__name__)


class TextPromptEncoder(PromptEncoder):
    """sam2's ``PromptEncoder`` that, while `text_tokens` is set, prompts with those tokens alone.

    ``SAM2Base._forward_sam_heads`` always passes a point prompt (a padding point, label -1, when the
    frame has none); EVF-SAM2 drops it and gives the text token as the only sparse prompt, with the
    dense prompt of "no mask" (``no_mask_embed``), as its image model does.
    """

    text_tokens: torch.Tensor | None = None  # [B,1,C] while a text prompt is decoded

    def forward(self, points, boxes, masks):
        if self.text_tokens is None:
            return super().forward(points, boxes, masks)
        if points is not None and bool((points[1] != PADDING_POINT_LABEL).any()):
            raise ValueError("a frame takes a text prompt or point prompts, not both")
        sparse, dense = super().forward(None, boxes, masks)
        n = len(self.text_tokens)
        tokens = self.text_tokens.to(sparse.dtype)
        return torch.cat([sparse.expand(n, -1, -1), tokens], dim=1), dense.expand(n, -1, -1, -1)


class TextVideoPredictor(SAM2VideoPredictor):
    """``SAM2VideoPredictor`` with text prompts (`add_text`), lazily read frames (`init_frames`) and
    bounded per-frame state (`prune_memory`)."""

    @contextmanager
    def _text_prompt(self, tokens: torch.Tensor) -> Iterator[None]:
        encoder = prompt_encoder(self)
        encoder.text_tokens = tokens
        try:
            yield
        finally:
            encoder.text_tokens = None

    @torch.inference_mode()
    def init_frames(self, frames: VideoFrames, offload_state_to_cpu: bool = False) -> dict:
        """An inference state over ``frames`` (`VideoFrames`), read one at a time when sam2 needs
        them. The same keys as ``init_state``, whose loader holds every frame of the clip."""
        images = SamFrames(frames, self.image_size)
        return new_inference_state(images, len(frames), frames.size, self.device, offload_state_to_cpu)

    @torch.inference_mode()
    def add_text(self, state: dict, frame_idx: int, obj_id: int, token: torch.Tensor) -> dict:
        """Decode ``token`` (``[1,1,C]``) on ``frame_idx`` for object ``obj_id`` as a conditioning
        frame (no memory), as EVF-SAM2's ``add_new_text``; not yet kept (`keep_prompt`).

        Returns:
            sam2's compact frame output (``pred_masks`` ``[1,1,S/4,S/4]``, ``object_score_logits``, ...).

        Raises:
            ValueError: the object was already tracked on that frame (a prompt starts a track there).
        """
        obj_idx = object_index(self, state, obj_id)
        if is_tracked(state, obj_idx, frame_idx):
            raise ValueError(f"object {obj_id} is already tracked on frame {frame_idx}")
        with self._text_prompt(token):
            return decode_conditioning_frame(self, state, obj_idx, frame_idx)

    def keep_prompt(self, state: dict, frame_idx: int, obj_id: int, out: dict) -> None:
        """Make ``out`` (from `add_text`) a conditioning frame of ``obj_id``: the next
        ``propagate_in_video`` encodes its memory and tracks from it."""
        keep_conditioning_output(state, object_index(self, state, obj_id), frame_idx, out)

    def memory_window(self) -> int:
        """How many frames back memory attention reads non-conditioning outputs: masks of the last
        ``num_maskmem - 1`` frames (every ``memory_temporal_stride_for_eval``-th) and object pointers
        of the last ``max_obj_ptrs_in_encoder - 1``."""
        masks = (self.num_maskmem - 1) * self.memory_temporal_stride_for_eval + 1
        return max(masks, self.max_obj_ptrs_in_encoder)

    def prune_memory(self, state: dict, frame_idx: int) -> None:
        """Drop the non-conditioning outputs that tracking forward from ``frame_idx`` never reads
        again (conditioning frames stay: every later frame attends to them)."""
        oldest = frame_idx - self.memory_window()
        for outputs in all_frame_outputs(state):
            stale = [t for t in outputs[NON_CONDITIONING] if t < oldest]
            for t in stale:
                del outputs[NON_CONDITIONING][t]


class SamFrames:
    """What sam2 indexes as ``state["images"]``: frame ``k`` of the readable frames as a normalised
    ``[3,S,S]`` float tensor, computed exactly as sam2's JPEG-folder loader does (a PIL resize of the
    RGB frame to S x S, ``/ 255`` in float64, then ImageNet mean/std in float32)."""

    def __init__(self, frames: VideoFrames, image_size: int) -> None:
        self.frames = frames
        self.image_size = image_size
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k: int) -> torch.Tensor:
        rgb = Image.fromarray(self.frames.read(k))
        resized = np.asarray(rgb.resize((self.image_size, self.image_size))) / 255.0
        pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
        return (pixels - self.mean) / self.std


# Memory-module weights: the keys our SAM-2 backend drops (SAM2_CHECKPOINT's dropped rules) are
# exactly the ones the video model adds. EVF-SAM2's releases were saved through transformers, which
# renames parameters called "gamma" to "weight": their vendored sam2 calls the memory encoder's
# CXBlock layer scale `weight`, sam2 calls it `gamma`.
_MEMORY_PATTERNS = tuple(rule.pattern for rule in SAM2_CHECKPOINT.rules if rule.target is None)
_LAYER_SCALE = Rule(r"memory_encoder\.fuser\.layers\.(\d+)\.weight", r"memory_encoder.fuser.layers.\1.gamma")
_IMAGE_PATH_PATTERNS = tuple(rule.pattern for rule in SAM2_CHECKPOINT.rules if rule.target is not None)
_IMAGE_PATH = "image path, prompt encoder and mask decoder: the EVF model's own"


def _memory_format(prefix: str) -> CheckpointFormat:
    """Memory keys under ``prefix`` (a regex) -> sam2's names; image-path keys dropped."""
    layer_scale = Rule(prefix + _LAYER_SCALE.pattern, _LAYER_SCALE.target)
    keep = [Rule(f"{prefix}({pattern})", r"\1") for pattern in _MEMORY_PATTERNS]
    drop = [Rule(prefix + pattern, None, _IMAGE_PATH) for pattern in _IMAGE_PATH_PATTERNS]
    return CheckpointFormat(name="sam2_memory", rules=(layer_scale, *keep, *drop), containers=())


def read_memory_weights(source: str | Path) -> StateDict:
    """The SAM-2 memory modules' weights of a released EVF-SAM2 directory (``visual_model.*``) or of
    an official ``sam2*_hiera_*.pt`` checkpoint, under sam2's names.

    Raises:
        FileNotFoundError: no such file or directory.
        CheckpointError: the weights hold no memory modules, or keys of another format.
    """
    source = Path(source)
    if source.is_dir():
        state, prefix = read_release_state(source), BACKEND_PREFIX
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
    else:
        state, prefix = read_state_dict(source), ""
    memory = _memory_format(prefix.replace(".", r"\.")).remap(state, source=str(source))
    if not memory:
        raise CheckpointError(
            f"{source}: no SAM-2 memory modules (memory_attention.*, memory_encoder.*, ...); "
            "EVF's own exports and .ckpt files hold the image path only"
        )
    return memory


def backend_state(backend: Sam2Backend) -> StateDict:
    """Our backend's tensors under sam2's ``SAM2Base`` names (the release layout's export rules)."""
    to_sam2 = CheckpointFormat("sam2_image_path", RELEASE_LAYOUT.export_rules)
    return to_sam2.remap(backend.core_module.state_dict(), source="backend")


def build_video_predictor(
    model: EVFSAM, memory: Mapping[str, torch.Tensor] | None = None, seed: int = 0
) -> TextVideoPredictor:
    """sam2's video model for ``model``'s SAM-2 backend, on the model's device, in eval mode.

    Args:
        model: an `EVFSAM` with a SAM-2 backend that has its image encoder.
        memory: the memory modules' weights (`read_memory_weights`); None initialises them from
            ``seed`` (tracking is then meaningless: for tests and timing only).
        seed: seed of that random initialisation.

    Raises:
        VideoError: the backend is not a SAM-2 variant, or was built without its image encoder.
        CheckpointError: ``memory`` lacks keys or holds keys of other shapes.
    """
    backend = model.backend
    if not isinstance(backend, Sam2Backend):
        raise VideoError(
            f"video needs a SAM-2 backend (sam2_*, sam2.1_*): SAM-2's video predictor tracks the masks; "
            f"this model's backend is a {backend.info.family!r} backend"
        )
    if not backend.has_image_encoder:
        raise VideoError(
            "video needs the SAM-2 image encoder; the backend was built without it (image_encoder=False)"
        )
    use_cpu_connected_components()  # sam2's hole filling (fill_hole_area) without its CUDA extension
    config, overrides = video_config(backend.variant)
    target = f"++model._target_={TextVideoPredictor.__module__}.{TextVideoPredictor.__qualname__}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = build_sam2_video_predictor(
            config, None, device="cpu", hydra_overrides_extra=[target, *overrides]
        )
    set_prompt_encoder_class(predictor, TextPromptEncoder)  # the text token, with sam2's weights and keys
    state = backend_state(backend)
    if memory is None:
        log.warning(
            "SAM-2 memory modules are randomly initialised (seed %d): tracking is not meaningful", seed
        )
        own = predictor.state_dict()
        state.update({k: v for k, v in own.items() if k not in state})
    else:
        state.update(memory)
    fmt = CheckpointFormat(name="sam2_video", rules=())
    load_strict(predictor, state, fmt, source=f"{backend.variant} video model")
    return predictor.to(next(model.parameters()).device).eval()


__all__ = [
    "SamFrames",
    "TextPromptEncoder",
    "TextVideoPredictor",
    "backend_state",
    "build_video_predictor",
    "read_memory_weights",
]
