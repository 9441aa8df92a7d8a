"""Where EVF depends on sam2 beyond its public API: here, named once, each with a test.

Video (`evf.video.tracker`) drives ``SAM2VideoPredictor`` through internals that sam2 does not
document: the prompt encoder it builds (``sam_prompt_encoder``, swapped for a subclass that takes
the text token), ``_obj_id_to_idx``, ``_run_single_frame_inference`` (EVF-SAM2's first-frame
decode), and the layout of ``inference_state`` (the keys ``init_state`` fills, per object
``output_dict_per_obj`` / ``temp_output_dict_per_obj`` with ``cond_frame_outputs`` and
``non_cond_frame_outputs``, ``frames_tracked_per_obj``). The functions below are the only code
that touches them; `internals_problems` lists what an installed sam2 no longer has, naming its
version, and tests/test_sam2_compat.py fails on it.

Hole filling: sam2's video predictor post-processes every frame's mask with ``fill_holes_in_mask_scores`` when
its config sets ``fill_hole_area`` (EVF-SAM2's video configs set 8): background regions of at most
that many pixels become foreground (score 0.1). It finds them with
``sam2.utils.misc.get_connected_components``, which calls sam2's compiled CUDA extension
(``sam2._C``). A sam2 built without it (``SAM2_BUILD_CUDA=0``, as EVF installs it on machines
without CUDA) warns and skips the step, so masks, and through the memory every later frame, differ
from EVF-SAM2's on a GPU machine. `use_cpu_connected_components` puts a CPU implementation with
the extension's documented behaviour in its place:

* input ``[N,1,H,W]``, non-zero = foreground;
* 8-connectivity (pixels touching at a corner belong to one component);
* ``labels``: a positive label per foreground component, 0 on background; ``counts``: each
  foreground pixel's component area, 0 on background; both ``[N,1,H,W]`` int32 on the input's device.

The labels' numbering may differ from the kernel's; sam2 reads only ``labels > 0`` and the areas.
tests/test_sam2_compat.py checks the rule on hand-made masks and that sam2 still calls this function
where this module replaces it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
CONDITIONING, NON_CONDITIONING = "cond_frame_outputs", "non_cond_frame_outputs"
"""The two kinds of per-frame outputs of an object in sam2's inference state."""
PADDING_POINT_LABEL = -1
"""``SAM2Base._forward_sam_heads`` pads a frame without point prompts with one point of this label."""
INFERENCE_STATE_KEYS = frozenset(
    {
        "images", "num_frames", "offload_video_to_cpu", "offload_state_to_cpu", "video_height",
        "video_width", "device", "storage_device", "point_inputs_per_obj", "mask_inputs_per_obj",
        "cached_features", "constants", "obj_id_to_idx", "obj_idx_to_id", "obj_ids",
        "output_dict_per_obj", "temp_output_dict_per_obj", "frames_tracked_per_obj",
    }
)  # fmt: skip
"""What ``SAM2VideoPredictor.init_state`` puts in an inference state (`new_inference_state` builds it)."""
_METHODS = {  # SAM2VideoPredictor method -> the parameters EVF passes
    "_obj_id_to_idx": ("inference_state", "obj_id"),
    "_run_single_frame_inference": (
        "inference_state", "output_dict", "frame_idx", "batch_size", "is_init_cond_frame",
        "point_inputs", "mask_inputs", "reverse", "run_mem_encoder",
    ),
}  # fmt: skip
_ATTRIBUTES = ("num_maskmem", "memory_temporal_stride_for_eval", "max_obj_ptrs_in_encoder")


def sam2_version() -> str:
    return importlib.metadata.version("sam2")


def internals_problems() -> list[str]:
    """What the installed sam2 lacks of the internals this module uses (empty when all are there),
    each line naming sam2's version."""
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_video_predictor import SAM2VideoPredictor
    from sam2.utils import misc

    where = f"sam2 {sam2_version()}"
    problems = []
    for name, wanted in _METHODS.items():
        method = getattr(SAM2VideoPredictor, name, None)
        if method is None:
            problems.append(f"{where}: SAM2VideoPredictor.{name} is gone")
            continue
        have = list(inspect.signature(method).parameters)[1:]
        if missing := [p for p in wanted if p not in have]:
            problems.append(f"{where}: SAM2VideoPredictor.{name} lacks parameters {missing} (has {have})")
    if "self.sam_prompt_encoder = " not in inspect.getsource(SAM2Base._build_sam_heads):
        problems.append(f"{where}: SAM2Base._build_sam_heads no longer builds sam_prompt_encoder")
    init = inspect.signature(SAM2Base.__init__).parameters
    problems += [f"{where}: SAM2Base no longer takes {a}" for a in _ATTRIBUTES if a not in init]
    filled = set(
        re.findall(r'inference_state\["(\w+)"\]\s*=', inspect.getsource(SAM2VideoPredictor.init_state))
    )
    if filled != INFERENCE_STATE_KEYS:
        problems.append(
            f"{where}: init_state fills {sorted(filled)}, EVF builds {sorted(INFERENCE_STATE_KEYS)}"
        )
    for name in ("get_connected_components", "fill_holes_in_mask_scores"):
        if not hasattr(misc, name):
            problems.append(f"{where}: sam2.utils.misc.{name} is gone")
    return problems


def new_inference_state(
    images: Any,
    num_frames: int,
    size: tuple[int, int],
    device: torch.device,
    offload_state_to_cpu: bool = False,
) -> dict:
    """An inference state with ``init_state``'s keys over ``images`` (indexable: frame ``k`` as a
    normalised ``[3,S,S]`` tensor, moved to the device one at a time), ``size`` = (height, width)."""
    height, width = size
    return {
        "images": images,
        "num_frames": num_frames,
        "offload_video_to_cpu": True,
        "offload_state_to_cpu": offload_state_to_cpu,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def object_index(predictor: Any, state: dict, obj_id: int) -> int:
    """The row of ``obj_id`` in the state (added on first use)."""
    return predictor._obj_id_to_idx(state, obj_id)


def is_tracked(state: dict, obj_idx: int, frame_idx: int) -> bool:
    return frame_idx in state["frames_tracked_per_obj"][obj_idx]


def frame_outputs(state: dict, obj_idx: int) -> dict[str, dict[int, dict]]:
    """Object ``obj_idx``'s outputs by kind (`CONDITIONING`, `NON_CONDITIONING`), then frame."""
    return state["output_dict_per_obj"][obj_idx]


def all_frame_outputs(state: dict) -> list[dict[str, dict[int, dict]]]:
    return list(state["output_dict_per_obj"].values())


def decode_conditioning_frame(predictor: Any, state: dict, obj_idx: int, frame_idx: int) -> dict:
    """sam2's single-frame inference of a first prompt on ``frame_idx``: no memory, not stored, its
    memory not yet encoded (``propagate_in_video`` does that in its preflight)."""
    out, _ = predictor._run_single_frame_inference(
        inference_state=state,
        output_dict=frame_outputs(state, obj_idx),
        frame_idx=frame_idx,
        batch_size=1,
        is_init_cond_frame=True,
        point_inputs=None,
        mask_inputs=None,
        reverse=False,
        run_mem_encoder=False,
    )
    return out


def keep_conditioning_output(state: dict, obj_idx: int, frame_idx: int, out: dict) -> None:
    """Make ``out`` a conditioning frame of the object: the next propagation starts from it."""
    state["temp_output_dict_per_obj"][obj_idx][CONDITIONING][frame_idx] = out


def prompt_encoder(predictor: Any) -> torch.nn.Module:
    """The predictor's prompt encoder (``sam_prompt_encoder``, built by ``_build_sam_heads``)."""
    return predictor.sam_prompt_encoder


def set_prompt_encoder_class(predictor: Any, cls: type) -> None:
    """Give the predictor's prompt encoder the subclass ``cls``: the same module, parameters and
    state-dict keys, another ``forward``."""
    prompt_encoder(predictor).__class__ = cls


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N,1,H,W]`` mask -> ``(labels, counts)`` as sam2's CUDA ``get_connected_componnets``."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected masks of shape [N,1,H,W], got {tuple(mask.shape)}")
    binary = mask.detach().to("cpu", torch.uint8).numpy() != 0
    labels = np.zeros(binary.shape, dtype=np.int32)
    counts = np.zeros(binary.shape, dtype=np.int32)
    for i, image in enumerate(binary[:, 0]):
        found, _ = ndimage.label(image, structure=_EIGHT_CONNECTED)
        areas = np.bincount(found.ravel())
        areas[0] = 0
        labels[i, 0], counts[i, 0] = found, areas[found]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)


def has_cuda_extension() -> bool:
    """Whether sam2 was built with its CUDA extension (``sam2._C``)."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def use_cpu_connected_components() -> bool:
    """Make sam2's hole filling run without the CUDA extension; True if it was installed here.

    Replaces ``sam2.utils.misc.get_connected_components`` (the function ``fill_holes_in_mask_scores``
    looks up at call time) by `connected_components`, unless the extension is there.
    """
    import sam2.utils.misc as misc

    if has_cuda_extension() or misc.get_connected_components is connected_components:
        return False
    misc.get_connected_components = connected_components
    return True


__all__ = [
    "CONDITIONING",
    "INFERENCE_STATE_KEYS",
    "NON_CONDITIONING",
    "PADDING_POINT_LABEL",
    "all_frame_outputs",
    "connected_components",
    "decode_conditioning_frame",
    "frame_outputs",
    "has_cuda_extension",
    "internals_problems",
    "is_tracked",
    "keep_conditioning_output",
    "new_inference_state",
    "object_index",
    "prompt_encoder",
    "sam2_version",
    "set_prompt_encoder_class",
    "use_cpu_connected_components",
]
