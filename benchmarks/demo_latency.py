"""``evf demo`` latency: a new prompt on an image the page has encoded vs a new image.

    python benchmarks/demo_latency.py --models tiny large --iterations 1     # CPU, ~5 min on 2 cores

Two ways per model, each model in a fresh process:

* **session**: `evf.demo.session.DemoSession` in-process, what a request runs: a new image is
  ``load`` (read the PNG, the SAM image encoder once) + ``segment`` (BEIT-3 over the prompts, one
  mask-decoder call, postprocessing, mask PNGs and ``predictions.json`` written); a new prompt on
  the encoded image is ``segment`` alone. The encoder / decoder split is what the page shows.
* **served**: the page's ``/segment`` endpoint through ``gradio_client`` on 127.0.0.1, wall time
  of the whole round trip (upload of the 480 x 640 PNG, queue, the work above, download of the
  overlay and files). Every "new image" has new pixels (Gradio stores uploads by content).

Random weights; the real models read the bundled shapes tokenizer (only the token ids differ).
Writes ``benchmarks/results/demo_latency_<device>.json``; the write-up is ``demo_video.md``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, RESULTS, machine, peak_bytes, run_child  # noqa: E402

BENCH_MODELS = {"tiny": ("beit3_tiny", "sam_tiny"), **MODELS}
PROMPTS = ("the red circle", "the square on the left", "the largest blue shape", "the yellow triangle")


def build(name: str, device: torch.device):
    import evf
    from evf.assets import SHAPES_TOKENIZER

    encoder, backend = BENCH_MODELS[name]
    kwargs = {} if name == "tiny" else {"encoder_kwargs": {"tokenizer": SHAPES_TOKENIZER}}
    return evf.create_model(encoder, backend, **kwargs).to(device).eval()


def new_image(folder: Path, k: int) -> Path:
    """A 480 x 640 PNG whose pixels differ from every other ``k``."""
    image = np.random.default_rng(k).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    path = folder / f"image_{k}.png"
    Image.fromarray(image).save(path)
    return path


def session_rows(model, folder: Path, counts: list[int], warmup: int, iterations: int) -> list[dict]:
    from evf.demo.session import DemoSession

    rows = []
    for count in counts:
        text = "\n".join(PROMPTS[i % len(PROMPTS)] for i in range(count))
        fresh, prompt_only, encode_ms, decode_ms = [], [], [], []
        for k in range(warmup + iterations):
            session = DemoSession(model)
            start = time.perf_counter()
            session.load(new_image(folder, 1000 * count + k))
            session.segment(session.prompts(text, False, "", ""), encoded_now=True)
            total = time.perf_counter() - start
            start = time.perf_counter()
            result = session.segment(session.prompts(text, True, "", ""))  # other prompts, same image
            if k >= warmup:
                fresh.append(total)
                prompt_only.append(time.perf_counter() - start)
                encode_ms.append(result.encode_ms)
                decode_ms.append(result.decode_ms)
        rows.append({
            "way": "session", "prompts": count, "new_image_seconds": fresh, "new_prompt_seconds": prompt_only,
            "encode_ms": statistics.median(encode_ms), "decode_ms": statistics.median(decode_ms),
        })  # fmt: skip
    return rows


def served_rows(model, folder: Path, counts: list[int], warmup: int, iterations: int) -> list[dict]:
    from gradio_client import Client, handle_file

    from evf.demo.app import build_app

    app = build_app(model)
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    rows = []
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(folder / "downloads"))

        def segment(path: Path, text: str) -> float:
            start = time.perf_counter()
            client.predict(handle_file(str(path)), text, False, "", "", api_name="/segment")
            return time.perf_counter() - start

        for count in counts:
            text = "\n".join(PROMPTS[i % len(PROMPTS)] for i in range(count))
            fresh, prompt_only = [], []
            for k in range(warmup + iterations):
                path = new_image(folder, 2000 * count + k)
                first, again = segment(path, text), segment(path, text)  # same text: decoded again
                if k >= warmup:
                    fresh.append(first)
                    prompt_only.append(again)
            rows.append(
                {
                    "way": "served",
                    "prompts": count,
                    "new_image_seconds": fresh,
                    "new_prompt_seconds": prompt_only,
                }
            )
    finally:
        app.close()
    return rows


def measure(args: argparse.Namespace, name: str) -> list[dict]:
    """In the child process: session and served rows per prompt count."""
    torch.manual_seed(0)
    model = build(name, torch.device(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = session_rows(model, folder, args.prompts, args.warmup, args.iterations)
        rows += served_rows(model, folder, args.prompts, args.warmup, args.iterations)
    for row in rows:
        row.update(model=name, peak_bytes=peak_bytes(torch.device(args.device)))
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | way | prompts | new image (s) | new prompt, same image (s) | ratio | encode / decode ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fresh, again = statistics.median(r["new_image_seconds"]), statistics.median(r["new_prompt_seconds"])
        split = f"{r['encode_ms']:.0f} / {r['decode_ms']:.0f}" if "encode_ms" in r else ""
        cells = [
            r["model"],
            r["way"],
            r["prompts"],
            f"{fresh:.3f}",
            f"{again:.3f}",
            f"{fresh / again:.1f}x",
            split,
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(BENCH_MODELS), default=["tiny"])
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 4], help="expressions per request")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return
    passed = [f"--{k}={getattr(args, k)}" for k in ("device", "warmup", "iterations")]
    rows = []
    for name in args.models:
        rows += json.loads(run_child(Path(__file__), [name, *passed, "--prompts", *map(str, args.prompts)]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(table(rows))
    out = args.out or RESULTS / f"demo_latency_{torch.device(args.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "out")}
    out.write_text(json.dumps({"settings": settings, "machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
