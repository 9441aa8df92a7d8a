"""Save a built backend's weights in its family's official checkpoint layout (test helper)."""

import re
from pathlib import Path

import torch

from evf.sam_backends import SamBackend


def official_state(backend: SamBackend) -> dict:
    """The file content an official release of these weights would have."""
    family = backend.info.family
    if family == "sam":
        return backend.sam.state_dict()
    if family == "efficient_sam":
        return {"model": backend.sam.state_dict()}
    renames = [
        (r"^image_encoder\.backbone\.", "image_encoder."),
        (r"^image_encoder\.no_mem_embed$", "no_mem_embed"),
        (r"^(prompt_encoder|mask_decoder)\.", r"sam_\1."),
    ]
    state = {}
    for key, tensor in backend.sam2.state_dict().items():
        for pattern, target in renames:
            key = re.sub(pattern, target, key)
        state[key] = tensor
    return {"model": state}


def save_official(backend: SamBackend, path: Path) -> Path:
    torch.save(official_state(backend), path)
    return path
