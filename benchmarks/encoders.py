"""Forward + backward time and peak memory of every full-size encoder mode, on this machine's CPU.

    python benchmarks/encoders.py                       # all rows, 2 expressions each, scaled to 16
    python benchmarks/encoders.py --expressions 16      # the real batch (slow on a small CPU)
    python benchmarks/encoders.py --rows vilt_b32:early --rows beit3_large:early

Each row runs in a fresh subprocess: build the encoder (random init, fp32, training mode), run one
warm-up step, then time ``--repeats`` steps (the fastest counts, as ``timeit`` does, since other
processes only ever add time) of forward + ``out.square().sum().backward()`` on
synthetic inputs: ``N`` expressions of 16 tokens on ``ceil(N / 2)`` images (two expressions per
image, as in EVF-SAM training). Peak memory is the growth of the process's peak RSS
(``ru_maxrss``) from after the build to after the steps: gradients (4 bytes per parameter),
activations and temporaries. Time scales to 16 expressions linearly (every pass is per expression
or per image); memory scales as ``grads + (measured - grads) * 16 / N``, marked as an estimate.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

ROWS: dict[str, tuple[str, dict]] = {
    "clip_vit_l14_openai:text": ("clip_vit_l14_openai", {"fusion": "text"}),
    "clip_vit_l14_openai:late": ("clip_vit_l14_openai", {"fusion": "late"}),
    "clip_vit_h14_laion2b:text": ("clip_vit_h14_laion2b", {"fusion": "text"}),
    "clip_vit_h14_laion2b:late": ("clip_vit_h14_laion2b", {"fusion": "late"}),
    "vilt_b32:text": ("vilt_b32", {"fusion": "text"}),
    "vilt_b32:late": ("vilt_b32", {"fusion": "late"}),
    "vilt_b32:early": ("vilt_b32", {"fusion": "early"}),
    "beit3_base:early": ("beit3_base", {"fusion": "early", "feature": "cls_image"}),
    "beit3_large:text": ("beit3_large", {"fusion": "text", "feature": "cls_text"}),
    "beit3_large:late": ("beit3_large", {"fusion": "late", "feature": "concat"}),
    "beit3_large:early_l12": ("beit3_large", {"fusion": "early", "fusion_layers": 12}),
    "beit3_large:early": ("beit3_large", {"fusion": "early", "feature": "cls_image"}),
}
"""Row key -> (encoder, encoder kwargs). ``clip_vit_l14_laion2b`` is left out: the same
architecture as ``clip_vit_l14_openai`` (GELU instead of QuickGELU)."""
VOCAB = {"clip": 49408, "vilt": 30522, "beit3": 64010}
TOKENS = 16


def measure(name: str, kwargs: dict, expressions: int, repeats: int) -> dict:
    """Run in the child process: build, warm up, time; returns the numbers of one row."""
    import torch

    import evf
    from evf.encoders import ENCODERS

    torch.manual_seed(0)
    encoder = evf.create_encoder(name, **kwargs).train()
    params = sum(p.numel() for p in encoder.parameters())
    images = math.ceil(expressions / 2)
    size = ENCODERS.info(name).image.size
    family = ENCODERS.info(name).family
    pixels = torch.randn(images, 3, size, size)
    ids = torch.randint(4, VOCAB[family] - 1, (expressions, TOKENS))
    if family == "clip":
        ids[:, -1] = VOCAB["clip"] - 1  # <end_of_text>, the largest id
    mask = torch.ones_like(ids)
    index = torch.arange(expressions) // 2
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        encoder.zero_grad(set_to_none=False)
        encoder(pixels, ids, mask, index).square().sum().backward()

    step()  # warm-up: allocates the gradients
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline
    return {
        "params": params,
        "seconds": min(times),
        "all_seconds": times,
        "peak_bytes": peak_kib * 1024,
        "threads": torch.get_num_threads(),
    }


def run_row(key: str, expressions: int, repeats: int) -> dict:
    """Measure one row in a fresh interpreter, so peak RSS belongs to that row alone."""
    name, kwargs = ROWS[key]
    code = (
        f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"from encoders import measure; "
        f"print(json.dumps(measure({name!r}, {kwargs!r}, {expressions}, {repeats})))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict], expressions: int) -> str:
    scale = 16 / expressions
    lines = [
        f"| encoder | mode | parameters | s / fwd+bwd ({expressions} expr.) | s / 16 expr. | "
        f"peak RSS growth ({expressions} expr.) | est. / 16 expr. |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, r in results.items():
        name, mode = key.split(":")
        grads = 4 * r["params"]
        estimate = grads + max(r["peak_bytes"] - grads, 0) * scale
        lines.append(
            f"| `{name}` | {mode} | {r['params'] / 1e6:.1f}M | {r['seconds']:.2f} | "
            f"{r['seconds'] * scale:.1f} | {r['peak_bytes'] / 2**30:.2f} GiB | "
            f"{estimate / 2**30:.2f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--expressions", type=int, default=2, help="expressions per step (16 = the real batch)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per row, after one warm-up step")
    parser.add_argument("--rows", action="append", choices=sorted(ROWS), help="rows to run (default: all)")
    args = parser.parse_args()
    results = {}
    for key in args.rows or ROWS:
        results[key] = run_row(key, args.expressions, args.repeats)
        print(f"{key}: {results[key]}", file=sys.stderr, flush=True)
    print(table(results, args.expressions))


if __name__ == "__main__":
    main()
