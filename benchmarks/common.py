"""What the throughput and latency benchmarks share: models, synthetic batches, timers, memory, FLOPs.

Models are built with random weights (timing and FLOPs do not depend on the values); the BEIT-3
tokenizer is replaced by token ids drawn at random (training) or the bundled shapes tokenizer
(prediction), because the real sentencepiece file is not shipped.
"""

from __future__ import annotations

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
MODELS = {"small": ("beit3_base", "sam_vit_b"), "large": ("beit3_large", "sam_vit_h")}
"""Benchmark model -> (encoder, backend). ``large`` is the paper's EVF-SAM (BEIT-3-L + SAM-H)."""
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 tensor-core peak per GPU (vendor datasheets, SXM parts, no sparsity)."""


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


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The bf16 peak to compute MFU against: ``given``, else looked up from the GPU name."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run_child(script: Path, args: list[str]) -> str:
    """Run ``script --child ...`` in a fresh interpreter (its own peak memory), return its last line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script), "--child", *args], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]
