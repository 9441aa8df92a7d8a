"""Prediction latency: a fresh `evf.Predictor` per call (``set_image`` + ``predict``) on one image
with 1, 8 and 32 prompts, and the same prompts asked of an `evf.Predictor` whose image is already
set (decoder time: no image encoder).

    python benchmarks/predict_latency.py --models small                                    # CPU
    python benchmarks/predict_latency.py --models small large --device cuda --precision bf16 \\
        --warmup 3 --iterations 20                                                           # one GPU

One call (``set_image`` then ``predict``) preprocesses a 480 x 640 image, runs the SAM image encoder
once, BEIT-3 once over all prompts (image + text, early fusion), one mask-decoder call for all
prompts (`evf.decode.decode`) and the postprocessing to full resolution. Reported: seconds per
call, images/s and prompts/s; GFLOPs per call (``FlopCounterMode`` on the meta device), split into
the image encoder and the rest, so the per-prompt cost is visible. Random weights; the BEIT-3
tokenizer is the bundled shapes sentencepiece model (the real one is not shipped; only the token
ids differ). Each model runs in a fresh process. Writes ``benchmarks/results/predict_latency_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODELS,
    RESULTS,
    count_flops,
    peak_bytes,
    reset_peak,
    rows_per_model,
    timed,
    write_rows,
)

PROMPTS = ("the red circle", "the square on the left", "the largest blue shape", "the yellow triangle")


def build(name: str, device: torch.device):
    import evf
    from evf.assets import SHAPES_TOKENIZER

    encoder, backend = MODELS[name]
    with device:  # created where it runs: a GPU initialises BEIT-3-L + SAM-H in a second
        model = evf.create_model(encoder, backend, encoder_kwargs={"tokenizer": SHAPES_TOKENIZER})
    return model.to(device).eval()


def forward_flops(meta, image: np.ndarray, prompts: list[str]) -> int:
    """FLOPs of what `evf.decode.decode` runs inside a call: the image encoder, BEIT-3 over every
    prompt, one decoder call (postprocessing has no matmuls and, with its data-dependent indexing,
    cannot run on the meta device)."""
    tokens = meta.encoder.preprocessor.tokenize(prompts)
    sam_pixels = meta.backend.info.image(image)[None].to("meta")
    image_index = torch.zeros(len(prompts), dtype=torch.long, device="meta")
    text = (
        meta.encoder.preprocessor.transform_image(image)[None].to("meta"),
        tokens["input_ids"].to("meta"),
        tokens["attention_mask"].to("meta"),
        image_index,
    )

    def run():
        features = meta.encode_images(sam_pixels)
        return meta.backend.decode(features, image_index, meta.prompt_tokens(*text))

    return count_flops(run)


def measure(args: argparse.Namespace, name: str) -> list[dict]:
    """In the child process: one row per prompt count."""
    device = torch.device(args.device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    with torch.device("meta"):
        meta = build(name, torch.device("meta"))
    pixels = torch.empty(1, 3, meta.backend.info.image.size, meta.backend.info.image.size, device="meta")
    encoder_flops = count_flops(lambda: meta.backend.encode_image(pixels))
    import evf

    torch.manual_seed(0)
    model = build(name, device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None  # bf16: autocast, as `common.autocast`
    rows = []
    for count in args.prompts:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
        flops = forward_flops(meta, image, prompts)
        reset_peak(device)

        def call(p=prompts) -> None:  # a new image each call: the image encoder runs every time
            fresh = evf.Predictor(model, dtype=dtype)
            fresh.set_image(image)
            fresh.predict(p)

        times = timed(call, device, args.warmup, args.iterations)
        predictor = evf.Predictor(model, dtype=dtype)
        predictor.set_image(image)
        set_times = timed(lambda p=prompts, pr=predictor: pr.predict(p), device, args.warmup, args.iterations)
        rows.append({
            "model": name, "prompts": count, "seconds": times, "call_seconds": statistics.median(times),
            "predict_seconds": statistics.median(set_times),
            "flops": flops, "image_encoder_flops": encoder_flops, "peak_bytes": peak_bytes(device),
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | prompts | s/call | images/s | prompts/s | GFLOP/call | image encoder | peak mem "
        "| s/predict, image set |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["call_seconds"]
        lines.append(
            f"| {r['model']} | {r['prompts']} | {s:.2f} | {1 / s:.3f} | {r['prompts'] / s:.2f} | "
            f"{r['flops'] / 1e9:.0f} | {100 * r['image_encoder_flops'] / r['flops']:.0f}% | "
            f"{r['peak_bytes'] / 2**30:.2f} GiB | {r['predict_seconds']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small"])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8, 32], help="prompts per image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return
    passed = [f"--{k}={getattr(args, k)}" for k in ("device", "precision", "warmup", "iterations")]
    rows = rows_per_model(Path(__file__), args.models, [*passed, "--prompts", *map(str, args.prompts)])
    print(table(rows))
    out = args.out or RESULTS / f"predict_latency_{torch.device(args.device).type}.json"
    write_rows(out, args, rows)


if __name__ == "__main__":
    main()
