"""``evf demo`` latency: a new prompt on an image the page has encoded vs a new image.

    python benchmarks/demo_latency.py --models tiny --warmup 1 --iterations 5 \
        --out benchmarks/results/demo_latency_cpu_tiny.json
    python benchmarks/demo_latency.py --models large --warmup 0 --iterations 1 \
        --out benchmarks/results/demo_latency_cpu_large.json                    # ~10 GB, minutes

The page is served on 127.0.0.1 in the benchmark's process and asked through ``gradio_client``, as a
browser would: ``/segment`` with a new image (upload of a 480 x 640 PNG, read, the SAM image encoder
once, BEIT-3 over the prompts, one mask-decoder call, postprocessing, the overlay, mask PNGs and
``predictions.json`` written and downloaded), then the same request again on that image (everything
but the image encoder). Every "new image" has new pixels (Gradio stores uploads by content).
Reported per request: wall seconds, CPU seconds of the process (all threads: server, model,
client; on a shared CPU the wall time depends on the other jobs, the CPU time much less), and the
encoder / decoder milliseconds the page itself shows.

Model work runs in Gradio's worker threads, as in ``evf demo``. (The same ``Predictor.predict`` called
from the main thread took an erratic 0.2-3.4 s for the tiny model on the loaded 2-core machine,
against 16-30 ms from another thread: likely PyTorch's two OpenMP threads waiting on each other.)
Random weights; the real models read the bundled shapes tokenizer (only the token ids differ).
The write-up is ``demo_video.md``.
"""

from __future__ import annotations

import argparse
import json
import re
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
from common import MODELS, RESULTS, peak_bytes, rows_per_model, write_rows  # noqa: E402

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


class Clock:
    """Wall seconds and CPU seconds of this process (all its threads: the server's, the model's) since
    it was made. On a shared CPU the wall time depends on the other jobs; the CPU time much less."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


TIMING = re.compile(r"\*\*encode\*\* (\d+) ms .*\*\*decode\*\* (\d+) ms")  # the page's timing line


def _row(count: int, fresh: list[tuple], again: list[tuple]) -> dict:
    """Per request: (wall s, CPU s, the page's encode ms, decode ms)."""
    row: dict = {"prompts": count}
    for name, runs in (("new_image", fresh), ("new_prompt", again)):
        for k, key in enumerate(("seconds", "cpu_seconds", "encode_ms", "decode_ms")):
            row[f"{name}_{key}"] = [r[k] for r in runs]
    return row


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

        def segment(path: Path, text: str) -> tuple[float, float, int, int]:
            clock = Clock()
            timing = client.predict(handle_file(str(path)), text, False, "", "", api_name="/segment")[2]
            encode_ms, decode_ms = map(int, TIMING.search(timing).groups())
            return (*clock.read(), encode_ms, decode_ms)

        for count in counts:
            text = "\n".join(PROMPTS[i % len(PROMPTS)] for i in range(count))
            fresh, again = [], []
            for k in range(warmup + iterations):
                path = new_image(folder, 2000 * count + k)
                first, second = segment(path, text), segment(path, text)  # same text: decoded again
                if k >= warmup:
                    fresh.append(first)
                    again.append(second)
            rows.append(_row(count, fresh, again))
    finally:
        app.close()
    return rows


def measure(args: argparse.Namespace, name: str) -> list[dict]:
    """In the child process: one row per prompt count."""
    torch.manual_seed(0)
    model = build(name, torch.device(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        rows = served_rows(model, Path(tmp), args.prompts, args.warmup, args.iterations)
    for row in rows:
        row.update(model=name, peak_bytes=peak_bytes(torch.device(args.device)))
    return rows


def table(rows: list[dict]) -> str:
    """Medians: wall seconds (CPU seconds of the process) and the page's encode / decode ms."""
    lines = [
        "| model | prompts | new image: s (CPU s) | new prompt, same image: s (CPU s) | CPU ratio "
        "| page: encode / decode ms | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list)}
        cells = [
            r["model"], r["prompts"],
            f"{med['new_image_seconds']:.3f} ({med['new_image_cpu_seconds']:.3f})",
            f"{med['new_prompt_seconds']:.3f} ({med['new_prompt_cpu_seconds']:.3f})",
            f"{med['new_image_cpu_seconds'] / med['new_prompt_cpu_seconds']:.1f}x",
            f"{med['new_image_encode_ms']:.0f} / {med['new_prompt_decode_ms']:.0f}",
            f"{r['peak_bytes'] / 2**30:.1f} GiB",
        ]  # fmt: skip
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
    rows = rows_per_model(Path(__file__), args.models, [*passed, "--prompts", *map(str, args.prompts)])
    print(table(rows))
    out = args.out or RESULTS / f"demo_latency_{torch.device(args.device).type}_{'_'.join(args.models)}.json"
    write_rows(out, args, rows)


if __name__ == "__main__":
    main()
