"""Shared pieces of the video tests: a tiny EVF-SAM2 model and the moving-shapes clip on disk."""

from pathlib import Path

import torch

import evf
from evf.datamodules.shapes import ShapesClip, generate_clip, write_clip


def tiny_sam2_model(present: bool = True) -> evf.EVFSAM:
    """``beit3_tiny`` + ``sam2_tiny`` (random init) whose occlusion head is biased so that every
    decoded object is visible (``present``) or absent. Random weights would otherwise make that call
    at random; absent objects all have the same constant logits."""
    model = evf.create_model("beit3_tiny", "sam2_tiny").eval()
    with torch.no_grad():
        model.backend.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(1e3 if present else -1e3)
    return model


def small_clip(tmp_path: Path, num_frames: int = 8) -> tuple[ShapesClip, Path, Path]:
    """The moving-shapes clip (96 x 128), written as JPEG frames and DAVIS annotations."""
    clip = generate_clip(seed=0, num_frames=num_frames, size=(96, 128))
    frames, annotations = write_clip(clip, tmp_path / "clip")
    return clip, frames, annotations
