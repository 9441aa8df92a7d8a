"""``evf predict-video``: text-prompted masks through a clip with a SAM-2 model (`evf.predict_video`).

    evf predict-video --pretrained checkpoints/evf-sam2 --video clip.mp4 \\
        --prompt "the man on the left" --prompt "the dog" --output out/ [--redetect_every 10]
    evf predict-video --ckpt_path runs/x/last.ckpt --video frames/ --prompt "the red circle" \\
        --output out/ --ground_truth annotations/

writes mask PNGs, ``masks.jsonl``, ``overlay.mp4`` (and ``metrics.json`` with ``--ground_truth``) to
``--output`` (docs/video.md). SAM-2's memory modules come from ``--memory``, else from the
``--pretrained`` release, else from the run's SAM-2 checkpoint (``backend_checkpoint``); without
any they are randomly initialised, with a warning. Frames that cannot be read are listed in
``failures.json`` and on stderr; the command then exits with status 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from evf.checkpoint import CheckpointError
from evf.model import EVFSAM
from evf.video.errors import VideoError
from evf.video.predict import predict_video as run_predict_video
from evf.video.tracker import read_memory_weights

log = logging.getLogger(__name__)


def predict_video(
    *,
    video: Path,
    prompt: list[str],
    output: Path,
    ckpt_path: Path | None = None,
    pretrained: Path | None = None,
    memory: Path | None = None,
    redetect_every: int = 0,
    ground_truth: Path | None = None,
    threshold: float = 0.0,
    device: str = "cpu",
    offload_state_to_cpu: bool = False,
    fps: float | None = None,
    seed: int = 0,
) -> None:
    """Segment each --prompt through a clip with SAM-2's video predictor.

    Args:
        video: a folder of frames or a video file.
        prompt: an expression (repeatable): each is tracked as its own object.
        output: folder for the masks, masks.jsonl, overlay.mp4 and metrics.json.
        ckpt_path: our Lightning checkpoint of a SAM-2 model (or --pretrained).
        pretrained: a released or exported EVF-SAM2 directory (or --ckpt_path).
        memory: SAM-2's memory-module weights (an official sam2 .pt or an EVF-SAM2 release).
        redetect_every: re-run the prompts of lost objects every this many frames and after an
            object vanished; 0: the first frame only, as EVF-SAM.
        ground_truth: folder of DAVIS-style annotation PNGs: adds J / F / J&F (metrics.json).
        threshold: mask logit threshold.
        device: where the models run (cpu, cuda, ...).
        offload_state_to_cpu: keep SAM-2's per-frame state in CPU memory.
        fps: frame rate of overlay.mp4 (default: the video's, or 24 for frames).
        seed: seed of randomly initialised memory modules.
    """
    model, implicit_memory = _load_model(ckpt_path, pretrained)
    weights = read_memory_weights(memory) if memory is not None else _optional_memory(implicit_memory)
    report = run_predict_video(
        model.to(device),
        video,
        prompt,
        output,
        memory=weights,
        redetect_every=redetect_every,
        ground_truth=ground_truth,
        threshold=threshold,
        offload_state_to_cpu=offload_state_to_cpu,
        fps=fps,
        seed=seed,
    )
    print(f"{report.frames} frame(s), {len(prompt)} object(s) -> {output}")
    if report.metrics is not None:
        m = report.metrics
        print(f"J {m['J']:.4f}  F {m['F']:.4f}  J&F {m['J&F']:.4f}  ({m['frames']} annotated frames)")
    if report.failures:
        lines = [f"{len(report.failures)} frame(s) could not be read:"]
        lines += [f"  frame {f['frame']} ({f['name']}): {f['error']}" for f in report.failures]
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(1)


def _load_model(ckpt_path: Path | None, pretrained: Path | None) -> tuple[EVFSAM, Path | None]:
    """The model, and where its SAM-2 memory weights may be."""
    if (ckpt_path is None) == (pretrained is None):
        raise VideoError("give exactly one of --ckpt_path (a .ckpt) and --pretrained (a release directory)")
    if pretrained is not None:
        from evf.pretrained import load_pretrained

        if not Path(pretrained).is_dir():
            raise VideoError(f"--pretrained {pretrained}: not a directory")
        return load_pretrained(pretrained), Path(pretrained)
    from evf.module import EVFSAMModule

    if not Path(ckpt_path).is_file():
        raise VideoError(f"--ckpt_path {ckpt_path}: checkpoint not found")
    # Every EVF weight comes from the checkpoint; the SAM-2 file only supplies the memory modules.
    overrides = {"encoder_checkpoint": None, "backend_checkpoint": None, "init_from": None}
    module = EVFSAMModule.load_from_checkpoint(ckpt_path, map_location="cpu", **overrides)
    sam2_file = module.hparams.get("backend_checkpoint")
    return module.model.eval(), Path(sam2_file) if sam2_file else None


def _optional_memory(source: Path | None) -> dict[str, torch.Tensor] | None:
    """Memory weights from the model's own sources when they hold them (EVF's exports do not)."""
    if source is None or not source.exists():
        return None
    try:
        return read_memory_weights(source)
    except CheckpointError as err:
        log.warning("no SAM-2 memory weights in %s (%s)", source, err)
        return None


__all__ = ["predict_video"]
