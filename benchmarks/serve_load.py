"""Load test of ``evf serve`` on loopback: latency, throughput, errors and memory under concurrency.

Starts ``evf serve`` (the tiny model, released layout; random weights perturbed away from the init),
uploads a few images, and first measures concurrency 1 *paired*: one `evf.Predictor.predict` of a
text prompt in this process (the in-process floor), then the same prompt served, 200 times in turn,
so that both halves of each ratio see the same machine. Then for each concurrency (1, 8, 32) it runs
a bounded asyncio client for a fixed time: every worker loops ``POST /segment`` by ``image_id`` with
one text prompt, and one request in ten is malformed (each a kind the server must answer with a 4xx:
a box outside the image, an unknown field, an unknown image id, too many prompts, a text that is too
long). Every loop is bounded in count and in time. Reports p50 / p95 / p99 latency of the good
requests, requests/s, errors (a good request that failed, or a malformed one not answered with a
4xx), and the resident memory of the server's processes after warm-up and at the end. The server
batches as ``evf serve`` does by default (`evf.serve.batching`: every queued request, and a 5 ms
window only once two or more wait); then concurrency 1 and 8 without the window (``--batch_timeout
0``), concurrency 8 against a server that does not batch (``--max_batch_size 1``), and the same
model exported to ONNX served with ONNX Runtime underneath (``--onnx``; paired with the PyTorch
`evf.Predictor` and with `evf.deploy.OnnxPredictor`).

    .venv/bin/python benchmarks/serve_load.py            # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MALFORMED = [
    {"prompts": [{"box": [0, 0, 5000, 5]}]},
    {"prompts": [{"txt": "the cup"}]},
    {"image_id": "0123abcd", "prompts": [{"text": "a cup"}]},
    {"prompts": [{"text": "a"}] * 40},
    {"prompts": [{"text": "x" * 900}]},
]
SOURCE_FLAGS = ("--pretrained", "--onnx")  # their temporary paths stay out of the results
TEXTS = ["the red circle", "the blue square on the left", "the small triangle", "the largest shape"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _exports(directory: Path) -> tuple[Path, Path]:
    """The tiny model in the released layout and as an ONNX export (the same weights)."""
    import torch

    import evf
    from evf.deploy import export_onnx
    from evf.tools.export import export_release

    torch.manual_seed(0)
    model = evf.create_model("beit3_tiny", "sam_tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval()
    release = export_release(model, directory / "release", "beit3_tiny", "sam_tiny")
    return release, export_onnx(model, directory / "onnx", "beit3_tiny", "sam_tiny")


class Server:
    """``evf serve`` in its own process group."""

    def __init__(self, *flags: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "evf.cli",
            "serve",
            f"--port={self.port}",
            *flags,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("evf serve did not come up in 180 s")

    def rss_mb(self) -> float:
        root = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


async def _load(url: str, image_ids: list[str], concurrency: int, seconds: float, max_requests: int) -> dict:
    latencies, errors, malformed, good = [], 0, 0, 0
    deadline = time.monotonic() + seconds
    counter = iter(range(max_requests))

    async def worker(client: httpx.AsyncClient, rng: np.random.Generator) -> None:
        nonlocal errors, malformed, good
        while time.monotonic() < deadline and next(counter, None) is not None:
            image_id = image_ids[int(rng.integers(len(image_ids)))]
            if rng.random() < 0.1:
                body = {"image_id": image_id, **MALFORMED[int(rng.integers(len(MALFORMED)))]}
                answer = await client.post(f"{url}/segment", json=body)
                malformed += 1
                errors += not 400 <= answer.status_code < 500
                continue
            body = {"image_id": image_id, "prompts": [{"text": TEXTS[int(rng.integers(len(TEXTS)))]}]}
            start = time.perf_counter()
            answer = await client.post(f"{url}/segment", json=body)
            latencies.append(time.perf_counter() - start)
            good += 1
            errors += answer.status_code != 200 or len(answer.json().get("masks", [])) != 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        start = time.monotonic()
        await asyncio.gather(*(worker(client, np.random.default_rng(k)) for k in range(concurrency)))
        elapsed = time.monotonic() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "good_requests": good,
        "malformed_requests": malformed,
        "errors": errors,
        "requests_per_s": round((good + malformed) / elapsed, 1),
        "good_per_s": round(good / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def _paired_latency(url: str, image_id: str, predictor, repeats: int) -> dict:
    """Concurrency 1, paired: ``repeats`` times one `evf.Predictor.predict` of a text prompt in this
    process (the in-process floor, on the same image), then the same prompt served by ``image_id``.
    Alternating the two cancels the drift of a shared 2-core machine that separate timings suffer."""
    in_process, served = [], []
    with httpx.Client(timeout=60) as client:
        for k in range(repeats + 5):  # the first 5 pairs warm both sides up
            text = TEXTS[k % len(TEXTS)]
            start = time.perf_counter()
            predictor.predict(text)
            middle = time.perf_counter()
            body = {"image_id": image_id, "prompts": [{"text": text}]}
            client.post(f"{url}/segment", json=body).raise_for_status()
            end = time.perf_counter()
            if k >= 5:
                in_process.append(middle - start)
                served.append(end - middle)
    floor, ms = np.median(in_process) * 1000, np.array(served) * 1000
    return {
        "pairs": repeats,
        "predictor_decode_p50_ms": round(float(floor), 2),
        "served_p50_ms": round(float(np.median(ms)), 2),
        "served_p95_ms": round(float(np.percentile(ms, 95)), 2),
        "served_over_predictor": round(float(np.median(ms) / floor), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--max_requests", type=int, default=20_000, help="per concurrency level")
    parser.add_argument("--pairs", type=int, default=200, help="paired concurrency-1 requests")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]
    results: dict = {
        "machine": f"{os.cpu_count()} CPU cores",
        "model": "beit3_tiny + sam_tiny (fp32)",
    }
    import evf
    from evf.deploy import OnnxPredictor

    with tempfile.TemporaryDirectory() as tmp:
        release, onnx = _exports(Path(tmp))
        predictors = {"pytorch": evf.Predictor(evf.load_pretrained(release)), "onnx": OnnxPredictor(onnx)}
        for predictor in predictors.values():
            predictor.set_image(images[0])
        for name, flags, levels, paired_with in (
            # the default: every queued request, and a 5 ms window once two or more wait
            ("batched", [f"--pretrained={release}", "--max_batch_size=8"], (1, 8, 32), ("pytorch",)),
            # only what is queued, no window
            ("batched_no_window", [f"--pretrained={release}", "--max_batch_size=8", "--batch_timeout=0"],
             (1, 8), ()),
            ("unbatched", [f"--pretrained={release}", "--max_batch_size=1"], (8,), ("pytorch",)),
            ("onnx", [f"--onnx={onnx}", "--max_batch_size=8"], (1, 8), ("pytorch", "onnx")),
        ):  # fmt: skip
            server = Server(*flags)
            try:
                ids = [
                    httpx.post(f"{server.url}/images", json={"image": _png(im)}, timeout=60).json()[
                        "image_id"
                    ]
                    for im in images
                ]
                paired = {
                    runtime: _paired_latency(server.url, ids[0], predictors[runtime], args.pairs)
                    for runtime in paired_with
                }
                for runtime, numbers in paired.items():
                    print(name, f"paired with the {runtime} predictor:", numbers, flush=True)
                asyncio.run(_load(server.url, ids, 4, 5.0, 2000))  # warm-up
                rss = [round(server.rss_mb())]
                runs = []
                for concurrency in levels:
                    runs.append(
                        asyncio.run(_load(server.url, ids, concurrency, args.seconds, args.max_requests))
                    )
                    rss.append(round(server.rss_mb()))
                    print(name, runs[-1], f"rss {rss[-1]} MB", flush=True)
                results[name] = {
                    "flags": [f.split("=")[0] if f.startswith(SOURCE_FLAGS) else f for f in flags],
                    "paired_concurrency_1": paired,
                    "runs": runs,
                    "rss_mb_after_warmup_then_each_level": rss,
                }
            finally:
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
