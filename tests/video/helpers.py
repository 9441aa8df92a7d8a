"""Shared pieces of the video tests: a tiny EVF-SAM2 model and the moving-shapes clip on disk."""

from pathlib import Path

import torch

import evf
from evf.datamodules.shapes import ShapesClip, generate_clip, write_clip


def tiny_sam2_model(present: bool = True) -> evf.EVFSAM:
    """``beit3_tiny`` + ``sam2_tiny`` (random init). ``present`` biases SAM-2's occlusion head so that
    every decoded object is "visible": random weights would otherwise often report every object as
    absent, and absent objects all have the same constant logits (which would compare equal anyway)."""
    model = evf.create_model("beit3_tiny", "sam2_tiny").eval()
    if present:
        with torch.no_grad():
            model.backend.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    return model


def small_clip(tmp_path: Path, num_frames: int = 8) -> tuple[ShapesClip, Path, Path]:
    """The moving-shapes clip (96 x 128), written as JPEG frames and DAVIS annotations."""
    clip = generate_clip(seed=0, num_frames=num_frames, size=(96, 128))
    frames, annotations = write_clip(clip, tmp_path / "clip")
    return clip, frames, annotations
