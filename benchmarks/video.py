"""Text-prompted video: frames/s of `evf.predict_video` per SAM-2 size, and J&F of re-detection vs
the first frame only on the moving-shapes clip.

    python benchmarks/video.py --sizes sam2_tiny sam2_hiera_t sam2_hiera_s --frames 8    # CPU
    python benchmarks/video.py --sizes sam2_hiera_t sam2_hiera_s sam2_hiera_b+ sam2_hiera_l \\
        --frames 48 --device cuda                                                       # one GPU

Speed: one expression tracked through the clip (``generate_clip``, 120 x 160 frames, written as
JPEGs), writing nothing, after a two-frame warm-up run; seconds of `predict_video` from reading
the clip to the last frame's masks (the SAM-2 image encoder on every frame, memory attention and
encoding, the mask decoder; building the video model from the EVF model is included, ~0.1 s).
The text side is ``beit3_tiny`` (it only runs on prompted frames); random weights (speed does not
depend on the values). Each size runs in a fresh process.

J&F: random-init SAM-2 memory cannot track, and no trained SAM-2 memory is available offline, so the
comparison is the deterministic construction of tests/video/test_redetect.py: an oracle detector
(the clip's true masks as mask prompts) and a tracker whose occlusion head always says "absent"
(every track is lost one frame after its prompt). It measures what the merge rule recovers, not a
trained model's accuracy. Writes ``benchmarks/results/video_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, run_child  # noqa: E402

import evf  # noqa: E402
from evf.datamodules.shapes import generate_clip, write_clip  # noqa: E402
from evf.video import predict_video  # noqa: E402


def speed(size: str, frames: int, device: str) -> dict:
    clip = generate_clip(seed=0, num_frames=frames)
    with tempfile.TemporaryDirectory() as tmp:
        frames_dir, _ = write_clip(clip, tmp)
        warmup = Path(tmp) / "warmup"  # two frames: allocations and kernels, not the timed clip
        warmup.mkdir()
        for name in ("00000.jpg", "00001.jpg"):
            shutil.copy(frames_dir / name, warmup / name)
        model = evf.create_model("beit3_tiny", size).to(device).eval()
        predict_video(model, warmup, clip.expressions[:1])
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        report = predict_video(model, frames_dir, clip.expressions[:1])
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {
        "size": size,
        "frames": report.frames,
        "seconds": seconds,
        "frames_per_s": report.frames / seconds,
    }


def redetect_jf(frames: int) -> dict:
    clip = generate_clip(seed=0, num_frames=frames)
    model = evf.create_model("beit3_tiny", "sam2_tiny").eval()
    with torch.no_grad():  # every tracked frame: "absent"
        model.backend.mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-1e3)

    def oracle(k, image, rows):
        return clip.masks[list(rows), k]

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        frames_dir, annotations = write_clip(clip, tmp)
        for name, every in (("first_frame_only", 0), ("redetect_every_4", 4)):
            report = predict_video(
                model,
                frames_dir,
                clip.expressions,
                redetect_every=every,
                ground_truth=annotations,
                detector=oracle,
            )
            m = report.metrics
            out[name] = {
                "J": m["J"],
                "F": m["F"],
                "J&F": m["J&F"],
                "per_object": [
                    {"prompt": o["prompt"], "J&F": (o["J"] + o["F"]) / 2} for o in m["per_object"]
                ],
            }
    return {
        "frames": frames,
        "enter_frame": clip.enter_frame,
        "hidden_frames": list(clip.hidden_frames),
        **out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["sam2_tiny", "sam2_hiera_t", "sam2_hiera_s"])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--jf_frames", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: on a shared CPU, 2 threads thrash)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:  # one size, in a fresh process
        print(json.dumps(speed(args.sizes[0], args.frames, args.device)))
        return
    script = Path(__file__).resolve()
    rows = []
    for size in args.sizes:
        options = ["--frames", str(args.frames), "--device", args.device, "--threads", str(args.threads)]
        line = run_child(script, ["--sizes", size, *options])
        rows.append(json.loads(line))
        print(f"{size:<14} {rows[-1]['frames_per_s']:.3f} frames/s ({rows[-1]['seconds']:.1f} s)")
    jf = redetect_jf(args.jf_frames)
    for name in ("first_frame_only", "redetect_every_4"):
        print(
            f"{name:<18} J&F {jf[name]['J&F']:.3f}  "
            + "  ".join(f"{o['prompt']}: {o['J&F']:.3f}" for o in jf[name]["per_object"])
        )
    out = args.out or RESULTS / f"video_{args.device}.json"
    out.write_text(json.dumps({"machine": machine(), "speed": rows, "jf": jf}, indent=2) + "\n")


if __name__ == "__main__":
    main()
