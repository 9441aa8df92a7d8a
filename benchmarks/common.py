"""What the throughput and latency benchmarks share: models, synthetic batches, timers, memory, FLOPs.

Models are built with random weights (timing and FLOPs do not depend on the values); the BEIT-3
tokenizer is replaced by token ids drawn at random (training) or the bundled shapes tokenizer
(prediction), because the real sentencepiece file is not shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {
    "small": ("beit3_base", "sam_vit_b"),
    "large": ("beit3_large", "sam_vit_h"),
    "large_sam2": ("beit3_large", "sam2_hiera_l"),
    "tiny": ("beit3_tiny", "sam_tiny"),
    "tiny_sam2": ("beit3_tiny", "sam2_tiny"),
}
"""Benchmark model -> (encoder, backend). ``large`` is the paper's EVF-SAM (BEIT-3-L + SAM-H),
``large_sam2`` EVF-SAM2 (BEIT-3-L + SAM-2-L); the ``tiny`` ones rehearse scripts on a CPU."""
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: torch names it "NVIDIA H100 80GB HBM3"
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM, and GH200
    ("B200", 2250.0),
    ("A100", 312.0),  # SXM and PCIe
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)
"""Dense bf16 tensor-core peak TFLOP/s per GPU name (vendor datasheets, no sparsity), the most
specific name first: a device name takes the first entry it contains."""


def autocast(device: torch.device, precision: str):
    """bf16 autocast (as Lightning's ``bf16-mixed``) or nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, iterations: int) -> list[float]:
    """Seconds of each of ``iterations`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated (CUDA), or the peak RSS of this process (CPU: weights included)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matmuls, convolutions and attention ``fn`` runs (``FlopCounterMode``; elementwise
    ops are not counted). Run it on the ``meta`` device: nothing is computed."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def machine() -> dict:
    """Where the numbers come from (load average included: the CPU is shared)."""
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def peak_for_name(gpu_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU named like ``torch.cuda.get_device_name`` (None: unknown)."""
    return next((tflops for part, tflops in PEAK_TFLOPS if part in gpu_name), None)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The bf16 peak to compute MFU against: ``given``, else looked up from the GPU name."""
    if given is not None or device.type != "cuda":
        return given
    return peak_for_name(torch.cuda.get_device_name(device))


def save_backend_checkpoint(backend: str, path: Path, device: torch.device) -> Path:
    """Random weights of ``backend`` in its family's official checkpoint layout (what
    ``--model.backend_checkpoint`` and `evf cache-embeddings` read), built on ``device`` (a GPU
    initialises a SAM-H in a second) and saved from the CPU."""
    from evf.checkpoint import CheckpointFormat
    from evf.sam_backends import create_backend

    with device:
        built = create_backend(backend)
    official = CheckpointFormat(f"{backend}_official", built.info.release.export_rules)
    state = official.remap(built.core_module.state_dict(), source=backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in state.items()}, path)
    return path


def child_env() -> dict[str, str]:
    """Environment of a benchmark's child process: this checkout's ``evf`` first, whatever else
    ``PYTHONPATH`` held after it (the GPU machine's carried wheels), no hub downloads."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}


def run_child(script: Path, args: list[str]) -> str:
    """Run ``script --child ...`` in a fresh interpreter (its own peak memory), return its last line."""
    out = subprocess.run(
        [sys.executable, str(script), "--child", *args], capture_output=True, text=True, env=child_env()
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def write_rows(out: Path, args: argparse.Namespace, rows: list[dict], **extra: object) -> Path:
    """Write a benchmark's JSON to ``out``: its settings (every option but ``--child`` / ``--out``),
    the machine, any ``extra`` fields and the rows."""
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "out")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "machine": machine(), **extra, "rows": rows}, indent=1))
    return out


def rows_per_model(script: Path, models: list[str], passed: list[str]) -> list[dict]:
    """Each of ``models`` measured by ``script --child MODEL ...`` in its own process; their rows."""
    rows = []
    for name in models:
        rows += json.loads(run_child(script, [name, *passed]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    return rows
