"""SAM backends: image-encoder time per image, mask-decoder time per prompt, peak memory.

    python benchmarks/backends.py                                   # every full-size backend, CPU
    python benchmarks/backends.py --backends sam_vit_h sam2_hiera_l --repeats 5
    python benchmarks/backends.py --device cuda --precision bf16 --repeats 20     # one GPU

Each backend runs in a fresh process: build it (random init, eval mode, fp32 weights; ``bf16``
runs under autocast as ``bf16-mixed`` does), encode one ``S x S`` image (its input size) under
``inference_mode`` (``--grad-mode no_grad`` to compare), then decode ``N`` prompts of that image
in one mask-decoder call, each prompt one projected text token (as EVF-SAM decodes). Time: one
warm-up call, then the fastest and the median of ``--repeats`` calls (other processes on a shared
CPU only ever add time). Decoder time is per prompt: a call's time over ``N``. Memory: on CPU
the process's peak RSS after the build (weights) and after encoding (weights + activations;
``inference_mode`` keeps none of them beyond the layer that made them); on GPU,
``torch.cuda.max_memory_allocated`` during encoding and decoding. The table's CPU memory is the
peak RSS above the process's RSS before the build (the interpreter, torch and evf). GFLOPs:
``FlopCounterMode`` on the meta device (matmuls, convolutions, attention). SAM 2.1 has the
architecture of SAM 2 (other weights), so only ``sam2_hiera_*`` rows are run. Writes
``benchmarks/results/backends_<device>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, autocast, count_flops, peak_bytes, reset_peak, run_child, timed, write_rows  # noqa: E402

BACKENDS = (
    "sam_vit_b", "sam_vit_l", "sam_vit_h",
    "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l",
    "efficient_sam_vitt", "efficient_sam_vits",
)  # fmt: skip
"""Full-size backends (``sam2.1_*`` share the ``sam2_*`` architectures)."""


def measure(args: argparse.Namespace, name: str) -> dict:
    """In the child process: the numbers of one backend."""
    import evf

    device = torch.device(args.device)
    with torch.device("meta"):
        meta = evf.create_backend(name)
    size = meta.info.image.size
    pixels_meta = torch.empty(1, 3, size, size, device="meta")
    encode_flops = count_flops(lambda: meta.encode_image(pixels_meta))
    features_meta = meta.encode_image(pixels_meta)
    decode_flops = {
        n: count_flops(lambda n=n: meta.decode(features_meta, *_prompts(n, meta.prompt_dim, "meta")))
        for n in args.prompts
    }

    torch.manual_seed(0)
    rss_before = peak_bytes(torch.device("cpu"))
    backend = evf.create_backend(name).to(device).eval()
    params = sum(p.numel() for p in backend.parameters())
    rss_built = peak_bytes(torch.device("cpu"))
    pixels = torch.randn(1, 3, size, size, device=device)
    reset_peak(device)
    grad_mode = torch.inference_mode() if args.grad_mode == "inference_mode" else torch.no_grad()
    with grad_mode, autocast(device, args.precision):
        features = backend.encode_image(pixels)  # the first warm-up call; its features are decoded below
        encode_times = timed(
            lambda: backend.encode_image(pixels), device, max(args.warmup - 1, 0), args.repeats
        )
        encode_peak = peak_bytes(device)
        decode = {}
        for n in args.prompts:
            inputs = _prompts(n, backend.prompt_dim, device)
            times = timed(
                lambda inputs=inputs: backend.decode(features, *inputs), device, args.warmup, args.repeats
            )
            decode[str(n)] = {"seconds": times, "flops": decode_flops[n]}
    row = {
        "backend": name,
        "image_size": size,
        "params": params,
        "encode_seconds": encode_times,
        "encode_flops": encode_flops,
        "decode": decode,
        "peak_bytes": peak_bytes(device),
    }
    if device.type == "cpu":
        row |= {"rss_start_bytes": rss_before, "rss_built_bytes": rss_built, "rss_peak_bytes": encode_peak}
    return row


def _prompts(n: int, dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` prompts on image 0: its index and one (random) projected text token each."""
    return torch.zeros(n, dtype=torch.long, device=device), torch.randn(n, 1, dim, device=device)


def table(rows: list[dict], device: str) -> str:
    counts = sorted({int(n) for r in rows for n in r["decode"]})
    head = "| backend | params (M) | input | image encoder s/image (min / median) | GFLOP/image | "
    head += " | ".join(f"decoder ms/prompt @{n}" for n in counts)
    head += " | peak memory |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        enc = r["encode_seconds"]
        cells = [
            r["backend"], f"{r['params'] / 1e6:.1f}", f"{r['image_size']}",
            f"{min(enc):.3g} / {statistics.median(enc):.3g}", f"{r['encode_flops'] / 1e9:.0f}",
        ]  # fmt: skip
        for n in counts:
            times = r["decode"][str(n)]["seconds"]
            cells.append(f"{1e3 * min(times) / n:.2f}")
        memory = r["rss_peak_bytes"] - r["rss_start_bytes"] if device == "cpu" else r["peak_bytes"]
        cells.append(f"{memory / 2**30:.2f} GiB")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--prompts", nargs="+", type=int, default=[1, 8], help="prompts per decoder call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--grad-mode",
        choices=["inference_mode", "no_grad"],
        default="inference_mode",
        help="how autograd is off (EVFSAM.encode_images uses no_grad in training)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: results/backends_<device>.json)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.backends[0])))
        return
    passed = ["--prompts", *map(str, args.prompts), "--device", args.device, "--precision", args.precision,
              "--grad-mode", args.grad_mode, "--warmup", str(args.warmup),
              "--repeats", str(args.repeats)]  # fmt: skip
    rows = []
    for name in args.backends:
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.append(json.loads(run_child(Path(__file__), ["--backends", name, *passed])))
    out = write_rows(args.out or RESULTS / f"backends_{args.device.split(':')[0]}.json", args, rows)
    print(table(rows, args.device.split(":")[0]))
    print(f"\nwritten: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
