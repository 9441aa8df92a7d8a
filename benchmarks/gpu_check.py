"""GPU check: every GPU claim of EVF measured in one run of one command (benchmarks/README.md, "GPU check").

    bash benchmarks/gpu_check.sh                    # on the GPU machine: carried wheels, then this script
    python benchmarks/gpu_check.py                  # the same where the dependencies are installed
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json    # CPU rehearsal, tiny models

Parts, in this order (``--parts`` picks some):

1. ``environment``: GPU, torch / CUDA / cuDNN versions, bf16 support, a bf16 matmul's TFLOP/s, the
   versions of the packages the run imports, and which SDPA kernels BEIT-3's attention runs: each
   backend alone (``torch.nn.attention.sdpa_kernel``) on a forward + backward with padded text, and
   the kernels the profiler sees by default.
2. ``train``: `train_throughput.measure` for naive / evf / evf_cache at 1 and 3 expressions per image,
   bf16 autocast (as ``bf16-mixed``), AdamW: s/step, peak memory, FLOPs; the speed targets.
3. ``compile``: the cached training step (BEIT-3-L forward + backward, the decoder) with the
   multimodal encoder compiled (``torch.compile``) and not; the first step's time includes compiling.
4. ``fit``: a real ``evf fit`` of 3 optimizer steps with the paper config and each strategy file of
   ``configs/strategies/`` (one process), then a second ``evf fit --ckpt_path`` from the checkpoint it
   wrote, which must continue at step 4 (`FIT_STEPS`). DeepSpeed is skipped when it is not installed
   (and in the CPU rehearsal).
5. ``cache``: ``evf cache-embeddings`` with random weights saved in the backend's official layout;
   images/s as the tool reports it (image loading, encoding, writing).
6. ``predict``: `predict_latency.measure`, 1 / 8 / 32 prompts on one image.

Each part runs in its own process group with its own time limit. A part that fails or runs out of
time is recorded as such (status, error, its output's last lines) with whatever it measured before,
and the next part runs. The JSON is rewritten after every part; a part rewrites its own result file
after every measurement. ``--dry-run`` runs every part's code on the CPU with the tiny models (the test
suite does, so the script cannot rot); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODELS,
    RESULTS,
    ROOT,
    autocast,
    child_env,
    machine,
    peak_for_name,
    peak_tflops,
    save_backend_checkpoint,
    sync,
    timed,
)

PAPER_CONFIG = ROOT / "configs" / "evf_sam_h_beit3_l.yaml"
STRATEGIES = ROOT / "configs" / "strategies"
PROMPTS = [1, 8, 32]
FIT_STEPS, RESUMED_STEPS, RESUMED_EVERY = 3, 4, 2
"""The first ``evf fit`` runs 3 optimizer steps and saves ``step=3.ckpt``; the second, from that
checkpoint, runs to step 4 saving every 2 steps: it writes only ``step=4.ckpt`` if it continued, also
``step=2.ckpt`` if it started over. (A checkpoint every 3 steps would not tell them apart: with
gradient accumulation the resumed run saves its restored step 3 again.)"""


@dataclasses.dataclass(frozen=True)
class Profile:
    """What the parts run: on a GPU, or rehearsed on the CPU (``--dry-run``)."""

    device: str
    accelerator: str  # Lightning's, for `evf fit`
    precision: str  # "bf16" (autocast; `evf fit`: bf16-mixed) or "fp32" (a CPU without bf16 units)
    train_model: str  # a key of MODELS: parts train and compile
    images: int  # images per training step
    warmup: int  # untimed steps (after the first) before the timed ones
    iterations: int
    compile_backend: str
    fit_model: str  # a key of MODELS
    fit_batch_size: int
    strategies: tuple[str, ...]  # files of configs/strategies/
    cache_models: tuple[str, ...]  # keys of MODELS: their backends fill an embedding cache
    cache_images: int
    predict_models: tuple[str, ...]
    workers: int  # data-loading processes
    limits: dict[str, float]  # part -> seconds
    env: dict[str, str]  # set in the parts' processes


GPU = Profile(
    device="cuda", accelerator="gpu", precision="bf16", train_model="large", images=16, warmup=2,
    iterations=5, compile_backend="inductor", fit_model="small", fit_batch_size=4,
    strategies=("fsdp", "deepspeed_stage_2"), cache_models=("large", "large_sam2"), cache_images=128,
    predict_models=("large", "large_sam2"), workers=8,
    # 555 s in all: with the installation, inside one 600 s device command even if every part times out
    limits={"environment": 45, "train": 120, "compile": 120, "fit": 120, "cache": 75, "predict": 75},
    env={},
)  # fmt: skip
# The fits use BEIT-3-B + SAM-B: what a strategy does is the same for every size, and checkpoints
# of the paper's model (10 GB with AdamW) would take the run's time; part train measures that model.
DRY_RUN = Profile(
    # fp32: bf16 autocast is the same code, and slow on CPUs without bf16 matrix units
    device="cpu", accelerator="cpu", precision="fp32", train_model="tiny", images=2, warmup=0, iterations=1,
    # Inductor takes minutes to compile even the tiny BEIT-3 on 2 cores; "eager" still traces it
    compile_backend="eager", fit_model="tiny", fit_batch_size=2,
    strategies=("ddp", "deepspeed_stage_2"),  # Lightning runs FSDP on GPUs only
    cache_models=("tiny", "tiny_sam2"), cache_images=4, predict_models=("tiny", "tiny_sam2"), workers=0,
    limits={"environment": 120, "train": 120, "compile": 120, "fit": 240, "cache": 120, "predict": 120},
    # One thread: on a shared 2-core machine, two OpenMP threads spin-wait for each other (up to 5x
    # slower here); the tiny models have nothing to split.
    env={"OMP_NUM_THREADS": "1"},
)  # fmt: skip


# ---------------------------------------------------------------- running parts (parent process)


def part_command(name: str, result: Path, args: argparse.Namespace) -> list[str]:
    """The command line of one part's process."""
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--result", str(result)]
    command += ["--workdir", str(args.workdir)] + (["--dry-run"] if args.dry_run else [])
    return command + ([f"--peak-tflops={args.peak_tflops}"] if args.peak_tflops else [])


def run_streamed(
    command: list[str], prefix: str, timeout: float | None, own_group: bool, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Run ``command`` (``env`` added to `child_env`), echoing its output lines behind ``prefix``;
    return its exit code (None when it ran past ``timeout`` and was killed, with all its children)
    and its last 40 lines. ``own_group``: a new process group, so that a kill reaches the processes
    it started too."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env() | (env or {}),
        cwd=ROOT, start_new_session=own_group,
    )  # fmt: skip
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(prefix + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    reader.join(timeout=10)
    return code, "\n".join(tail)


def run_part(name: str, args: argparse.Namespace, limit: float, env: dict[str, str]) -> dict:
    """One part in its own process: status (ok / failed / timeout), seconds, what it recorded."""
    result = args.workdir / f"{name}.json"
    result.unlink(missing_ok=True)
    print(f"== {name} (limit {limit:g} s)", flush=True)
    start, cpu = time.perf_counter(), _children_cpu_seconds()
    code, tail = run_streamed(part_command(name, result, args), f"[{name}] ", limit, True, env)
    record = {"status": "ok" if code == 0 else "timeout" if code is None else "failed"}
    record |= {"seconds": round(time.perf_counter() - start, 1), "limit_s": limit}
    record["cpu_seconds"] = round(_children_cpu_seconds() - cpu, 1)  # its processes' (a killed one's: 0)
    results = json.loads(result.read_text()) if result.exists() else {}
    record["results"] = results
    if code != 0:
        errors = results.get("errors")
        record["error"] = json.dumps(errors) if errors else tail
    print(f"== {name}: {record['status']} in {record['seconds']} s", flush=True)
    return record


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def device_slug(dry_run: bool) -> str:
    """``h200`` for "NVIDIA H200" (from nvidia-smi: this process leaves the GPU to the parts)."""
    if dry_run:
        return "dry_run_cpu"
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        name = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown_gpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower().removeprefix("nvidia ")).strip("_")


# ---------------------------------------------------------------- inside a part's process


class Record:
    """What a part measured so far, rewritten to its result file after every change (a part killed
    at its time limit keeps what it recorded). Errors of single items are kept under ``errors``."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def __setitem__(self, key: str, value: object) -> None:
        self.data[key] = value
        self._write()

    @property
    def errors(self) -> dict[str, str]:
        return self.data.get("errors", {})

    @contextlib.contextmanager
    def item(self, name: str) -> Iterator[None]:
        """One measurement: its failure is recorded, and the part goes on with the next."""
        try:
            yield
        except (Exception, SystemExit) as err:  # SystemExit: how `evf` reports an anticipated error
            traceback.print_exc()
            self.data.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"[-3000:]
            self._write()

    def _write(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1))
        partial.replace(self.path)


def free_memory(device) -> None:
    """Drop what the last measurement left, so the next one's peak memory is its own."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_args(profile: Profile, compile_encoder: bool = False) -> argparse.Namespace:
    """The options `train_throughput.measure` reads."""
    return argparse.Namespace(
        device=profile.device, precision=profile.precision, optimizer="adamw", images=profile.images,
        warmup=profile.warmup, iterations=profile.iterations, compile=compile_encoder,
        compile_backend=profile.compile_backend,
    )  # fmt: skip


SDPA_KINDS = (
    ("cudnn", "cudnn_attention"),
    ("memory_efficient", "efficient_attention"),
    ("flash", "flash_attention"),
    ("math", "attention_math"),
)
"""SDPA kernel family -> what its aten operators' names contain."""


def sdpa_kinds(op_names: list[str]) -> list[str]:
    """The SDPA kernel families that ``op_names`` (profiler keys) show."""
    return sorted({kind for op in op_names for kind, marker in SDPA_KINDS if marker in op})


def sdpa_dispatch(profile: Profile) -> dict:
    """Which SDPA kernels BEIT-3's attention can use and which it uses, in a bf16 forward + backward
    of the training model's encoder over 2 images and 4 texts of different lengths (padded: the
    attention mask is not all-true, as in training)."""
    import torch
    from torch import profiler
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import evf
    from evf.assets import SHAPES_TOKENIZER

    device = torch.device(profile.device)
    encoder_name = MODELS[profile.train_model][0]
    with device:
        encoder = evf.create_encoder(encoder_name, tokenizer=SHAPES_TOKENIZER)
    encoder = encoder.to(device).train()
    texts = ["the red circle", "the square on the left of the largest blue shape", "a", "the triangle"]
    tokens = encoder.preprocessor.tokenize(texts)
    size = encoder.preprocessor.image.size
    inputs = (
        torch.randn(2, 3, size, size, device=device),
        tokens["input_ids"].to(device),
        tokens["attention_mask"].to(device),
        torch.tensor([0, 0, 1, 1], device=device),
    )

    def step() -> None:
        with autocast(device, profile.precision):
            feature = encoder(*inputs)
        feature.float().sum().backward()
        sync(device)

    alone = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            alone[name.lower()] = "not in this torch"
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    step()
                alone[name.lower()] = "ok"
            except Exception as err:  # a refusal is a finding; SDPA gives its reasons as warnings
                reasons = "; ".join(str(w.message).splitlines()[0] for w in caught)
                alone[name.lower()] = f"refused: {str(err).splitlines()[0]} ({reasons})"[:600]
    step()  # warm-up outside the profiler
    activities = [profiler.ProfilerActivity.CPU]
    activities += [profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    with profiler.profile(activities=activities) as prof:
        step()
    keys = [e.key for e in prof.key_averages()]
    ops = sorted(k for k in keys if k.startswith("aten::") and "attention" in k)
    kernel = re.compile("attention|fmha|flash|attn", re.I)
    kernels = sorted(k[:160] for k in keys if not k.startswith("aten::") and kernel.search(k))
    return {
        "encoder": encoder_name, "alone": alone, "default": sdpa_kinds(ops), "ops": ops,
        "kernels": kernels[:12],
    }  # fmt: skip


def matmul_tflops(device, n: int) -> float:
    """bf16 ``n x n @ n x n`` TFLOP/s (the ceiling an MFU is read against, beside the datasheet's)."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    times = timed(lambda: a @ b, device, 3, 10)
    return 2 * n**3 / min(times) / 1e12


def part_environment(profile: Profile, record: Record, args: argparse.Namespace) -> None:
    import torch

    device = torch.device(profile.device)
    info = {"machine": machine(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name, "capability": list(torch.cuda.get_device_capability(device)),
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version(),
            "peak_bf16_tflops": args.peak_tflops or peak_for_name(props.name),
        }  # fmt: skip
    packages = ("lightning", "jsonargparse", "segment-anything", "sam2", "open_clip_torch", "albumentations",
                "pycocotools", "deepspeed", "triton", "transformers", "timm")  # fmt: skip
    info["packages"] = {p: _version(p) for p in packages}
    record["device"] = info
    with record.item("matmul"):
        record["matmul_bf16_tflops"] = matmul_tflops(device, 8192 if device.type == "cuda" else 256)
    with record.item("sdpa"):
        record["sdpa"] = sdpa_dispatch(profile)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def part_train(profile: Profile, record: Record, args: argparse.Namespace) -> None:
    import torch
    import train_throughput

    device = torch.device(profile.device)
    record["peak_tflops"] = peak_tflops(device, args.peak_tflops)
    rows = []
    for expressions in (1, 3):
        for variant in train_throughput.VARIANTS:
            with record.item(f"{profile.train_model} x{expressions} {variant}"):
                rows.append(
                    train_throughput.measure(train_args(profile), profile.train_model, variant, expressions)
                )
                record["rows"] = rows
            free_memory(device)


def part_compile(profile: Profile, record: Record, args: argparse.Namespace) -> None:
    import torch
    import train_throughput

    device = torch.device(profile.device)
    record["peak_tflops"] = peak_tflops(device, args.peak_tflops)
    record["backend"] = profile.compile_backend
    rows = []
    for compiled in (False, True):
        with record.item("compiled" if compiled else "not compiled"):
            rows.append(
                train_throughput.measure(train_args(profile, compiled), profile.train_model, "evf_cache", 1)
            )
            record["rows"] = rows
        free_memory(device)


def part_fit(profile: Profile, record: Record, args: argparse.Namespace) -> None:
    for strategy in profile.strategies:
        with record.item(strategy):
            if strategy.startswith("deepspeed"):
                reason = (
                    "deepspeed is not installed" if importlib.util.find_spec("deepspeed") is None
                    else "DeepSpeed trains on GPUs only" if profile.device == "cpu" else None
                )  # fmt: skip
                if reason:
                    record[strategy] = {"status": "skipped", "reason": reason}
                    continue
            record[strategy] = fit_and_resume(profile, strategy, args.workdir / f"fit_{strategy}")


def fit_and_resume(profile: Profile, strategy: str, run: Path) -> dict:
    """``evf fit`` for `FIT_STEPS` optimizer steps, then from its checkpoint to `RESUMED_STEPS`."""
    from evf.assets import SHAPES_TOKENIZER

    encoder, backend = MODELS[profile.fit_model]
    batches = 2 * RESUMED_STEPS  # the paper config accumulates 2 batches per optimizer step
    command = [
        "--config", str(PAPER_CONFIG), "--config", str(STRATEGIES / f"{strategy}.yaml"),
        f"--model.encoder={encoder}", f"--model.backend={backend}", f"--model.tokenizer={SHAPES_TOKENIZER}",
        f"--trainer.accelerator={profile.accelerator}", "--trainer.devices=1",
        "--trainer.limit_val_batches=0",
        f"--trainer.precision={'bf16-mixed' if profile.precision == 'bf16' else '32-true'}",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={run}",
        f"--trainer.logger.init_args.save_dir={run}", f"--data.init_args.batch_size={profile.fit_batch_size}",
        f"--data.init_args.num_train={batches * profile.fit_batch_size}",
        f"--data.init_args.num_workers={profile.workers}",
    ]  # fmt: skip
    first, resumed = run / "first", run / "resumed"
    start = time.perf_counter()
    _evf_fit([*command, *_checkpoints_every(FIT_STEPS, first), f"--trainer.max_steps={FIT_STEPS}"])
    fit_seconds = time.perf_counter() - start
    written = sorted(p.name for p in first.glob("*.ckpt"))
    if written != [f"step={FIT_STEPS}.ckpt"]:
        raise RuntimeError(f"evf fit wrote {written} in {first}, expected step={FIT_STEPS}.ckpt")
    checkpoint = first / written[0]
    start = time.perf_counter()
    resume = [f"--ckpt_path={checkpoint}", f"--trainer.max_steps={RESUMED_STEPS}"]
    _evf_fit([*command, *_checkpoints_every(RESUMED_EVERY, resumed), *resume])
    resume_seconds = time.perf_counter() - start
    continued = sorted(p.name for p in resumed.glob("*.ckpt"))
    if continued != [f"step={RESUMED_STEPS}.ckpt"]:
        raise RuntimeError(f"the resumed fit wrote {continued}: it did not continue at step {FIT_STEPS + 1}")
    return {
        "status": "ok", "model": profile.fit_model, "steps": [FIT_STEPS, RESUMED_STEPS],
        "fit_seconds": fit_seconds,
        "resume_seconds": resume_seconds, "checkpoint_is_directory": checkpoint.is_dir(),
        "checkpoint_bytes": _size(checkpoint), "resumed_run_wrote": continued,
    }  # fmt: skip


def _checkpoints_every(steps: int, directory: Path) -> list[str]:
    """A config replacing the paper config's callbacks: a checkpoint every ``steps`` optimizer steps,
    named by step, into ``directory`` (and the learning-rate monitor, as the paper config)."""
    directory.mkdir(parents=True, exist_ok=True)
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(directory), "filename": "{step}", "every_n_train_steps": steps,
                       "save_top_k": -1, "save_last": False}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
         "init_args": {"logging_interval": "step"}},
    ]  # fmt: skip
    config = directory.with_suffix(".callbacks.yaml")
    config.write_text(json.dumps({"trainer": {"callbacks": callbacks}}, indent=1))  # JSON is YAML
    return ["--config", str(config)]


def _evf_fit(arguments: list[str]) -> None:
    """``python -m evf.cli fit ...`` in a fresh process (in this part's process group)."""
    code, tail = run_streamed(
        [sys.executable, "-m", "evf.cli", "fit", *arguments], "  ", None, own_group=False
    )
    if code != 0:
        raise RuntimeError(f"evf fit exited with {code}:\n{tail}")


def _size(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def part_cache(profile: Profile, record: Record, args: argparse.Namespace) -> None:
    import torch

    from evf.assets import SHAPES_TOKENIZER
    from evf.cli import main as evf_main

    device = torch.device(profile.device)
    batch = 16 if device.type == "cuda" else 2
    for name in profile.cache_models:
        encoder, backend = MODELS[name]
        with record.item(backend):
            start = time.perf_counter()
            checkpoint = save_backend_checkpoint(backend, args.workdir / f"{backend}.pth", device)
            saved = time.perf_counter() - start
            command = [
                "cache-embeddings", "--config", str(PAPER_CONFIG), f"--model.encoder={encoder}",
                f"--model.backend={backend}", f"--model.tokenizer={SHAPES_TOKENIZER}",
                f"--model.backend_checkpoint={checkpoint}", f"--out={args.workdir / f'cache_{backend}'}",
                f"--data.init_args.num_train={profile.cache_images}", "--data.init_args.num_val=0",
                "--data.init_args.num_test=0", f"--batch_size={batch}", f"--num_workers={profile.workers}",
                f"--device={profile.device}", f"--bf16={profile.precision == 'bf16'}", "--progress=false",
            ]  # fmt: skip
            printed = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(printed):
                evf_main(command)  # what the console script `evf` runs
            seconds = time.perf_counter() - start
            print(printed.getvalue(), end="")
            found = re.search(r"(\d+) images encoded in ([\d.]+) s \(([\d.]+) images/s\)", printed.getvalue())
            if found is None:
                raise RuntimeError(f"evf cache-embeddings printed no rate: {printed.getvalue()!r}")
            record[backend] = {
                "images": int(found[1]), "encode_seconds": float(found[2]),
                "images_per_second": float(found[3]),
                "command_seconds": seconds, "checkpoint_seconds": saved,
            }  # fmt: skip
        free_memory(device)


def part_predict(profile: Profile, record: Record, args: argparse.Namespace) -> None:
    import predict_latency
    import torch

    device = torch.device(profile.device)
    options = argparse.Namespace(
        device=profile.device, precision=profile.precision, warmup=profile.warmup,
        iterations=profile.iterations, prompts=PROMPTS,
    )  # fmt: skip
    rows = []
    for name in profile.predict_models:
        with record.item(name):
            rows += predict_latency.measure(options, name)
            record["rows"] = rows
        free_memory(device)


PARTS: dict[str, Callable[[Profile, Record, argparse.Namespace], None]] = {
    "environment": part_environment,
    "train": part_train,
    "compile": part_compile,
    "fit": part_fit,
    "cache": part_cache,
    "predict": part_predict,
}


# ---------------------------------------------------------------- the report


def targets(rows: list[dict], peak: float | None) -> list[dict]:
    """The speed issue's targets, each with its measured value and pass / fail (None: not measured).
    Every variant trains on the same batch, so a ratio of expressions/s is one of step times."""
    by = {(r["variant"], r["expressions_per_image"]): r for r in rows if not r.get("compiled")}
    found = []
    for expressions, need in ((1, 10.0), (3, 5.0)):
        naive, cache = by.get(("naive", expressions)), by.get(("evf_cache", expressions))
        value = naive["step_seconds"] / cache["step_seconds"] if naive and cache else None
        name = f"evf_cache >= {need:g}x naive expressions/s, {expressions} expr/img"
        found.append({"target": name, "value": value, "threshold": need})
    for expressions in (1, 3):
        cache = by.get(("evf_cache", expressions))
        value = cache["flops"] / cache["step_seconds"] / (peak * 1e12) if cache and peak else None
        found.append({"target": f"MFU >= 40% in the BEIT-3-L step (evf_cache), {expressions} expr/img",
                      "value": value, "threshold": 0.4})  # fmt: skip
    for t in found:
        t["pass"] = None if t["value"] is None else t["value"] >= t["threshold"]
    return found


def render(report: dict) -> str:
    """The Markdown report: one line per part, then the tables of the parts that measured."""
    import predict_latency
    import train_throughput

    parts = report["parts"]
    lines = ["| part | status | seconds (limit) | summary |", "|---|---|---:|---|"]
    for name, part in parts.items():
        summary = _guarded(lambda n=name, r=part["results"]: SUMMARIES[n](r)) if part["results"] else ""
        if part["status"] != "ok":
            summary += f" ERROR: {part.get('error', '')[-300:]}".replace("\n", " ").replace("|", "/")
        lines.append(f"| {name} | {part['status']} | {part['seconds']} ({part['limit_s']:g}) | {summary} |")
    for name in ("train", "compile"):
        results = parts.get(name, {}).get("results", {})
        if results.get("rows"):
            table = _guarded(lambda r=results: train_throughput.table(r["rows"], r.get("peak_tflops")))
            lines += ["", f"{name}:", "", table]
    found = report.get("targets")
    if isinstance(found, str):  # not made from what part train recorded
        lines += ["", f"targets: {found}"]
    elif found:
        lines += ["", "| target | measured | pass |", "|---|---:|---|"]
        for t in found:
            value = "-" if t["value"] is None else f"{t['value']:.2f}"
            lines.append(f"| {t['target']} | {value} | {'-' if t['pass'] is None else t['pass']} |")
    rows = parts.get("predict", {}).get("results", {}).get("rows")
    if rows:
        lines += ["", "predict:", "", _guarded(lambda: predict_latency.table(rows))]
    return "\n".join(lines)


def _guarded(make: Callable[[], object]) -> object:
    """A piece of the report made from what a part recorded; what a failed part left may not make
    one, and that must not lose the rest of the report."""
    try:
        return make()
    except Exception as err:
        return f"(not made: {type(err).__name__}: {err})"


def _summary_environment(results: dict) -> str:
    device, sdpa = results.get("device", {}), results.get("sdpa", {})
    text = f"{device.get('gpu', 'CPU')}, torch {device.get('torch')}, CUDA {device.get('cuda')}"
    text += f", bf16 {device.get('bf16', '-')}"
    if "matmul_bf16_tflops" in results:
        text += f", bf16 matmul {results['matmul_bf16_tflops']:.1f} TFLOP/s"
    if sdpa:
        alone = ", ".join(f"{k} {'ok' if v == 'ok' else 'no'}" for k, v in sdpa["alone"].items())
        text += f"; SDPA by default: {'+'.join(sdpa['default']) or '?'} (alone: {alone})"
    return text


def _summary_compile(results: dict) -> str:
    rows = {r["compiled"]: r for r in results.get("rows", [])}
    if len(rows) < 2:
        return ""
    off, on = rows[False], rows[True]
    return (
        f"{results['backend']}: {off['step_seconds']:.3f} -> {on['step_seconds']:.3f} s/step "
        f"({off['step_seconds'] / on['step_seconds']:.2f}x), first step {on['first_step_seconds']:.1f} s"
    )


def _summary_fit(results: dict) -> str:
    done = []
    for strategy, r in results.items():
        if strategy == "errors":
            continue
        if r["status"] == "ok":
            size = r["checkpoint_bytes"] / 2**30
            done.append(f"{strategy}: fit {r['fit_seconds']:.0f} s, resumed {r['resume_seconds']:.0f} s, "
                        f"checkpoint {size:.2f} GiB")  # fmt: skip
        else:
            done.append(f"{strategy}: {r['status']} ({r.get('reason', '')})")
    return "; ".join(done)


def _summary_cache(results: dict) -> str:
    return "; ".join(
        f"{k}: {r['images_per_second']:.1f} images/s ({r['images']} images)"
        for k, r in results.items()
        if k != "errors"
    )


SUMMARIES: dict[str, Callable[[dict], str]] = {
    "environment": _summary_environment,
    "train": lambda r: f"{len(r.get('rows', []))} of 6 configurations (table below)",
    "compile": _summary_compile,
    "fit": _summary_fit,
    "cache": _summary_cache,
    "predict": lambda r: f"{len(r.get('rows', []))} rows (table below)",
}


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU with tiny models")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument(
        "--time-limit", action="append", default=[], metavar="PART=SECONDS", help="override a part's limit"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: by GPU name)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: OUT_DIR/gpu_check_<device>.json)"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="checkpoints, caches (default: a temporary one)"
    )
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # in a part's process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limits = {}
    for item in args.time_limit:
        name, _, seconds = item.partition("=")
        if name not in PARTS or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            parser.error(f"--time-limit {item}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        limits[name] = float(seconds)
    args.time_limit = limits
    args.parts = [name for name in PARTS if name in args.parts]  # always in the documented order
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = DRY_RUN if args.dry_run else GPU
    if args.part:  # inside a part's process
        record = Record(args.result)
        PARTS[args.part](profile, record, args)
        return 1 if record.errors else 0
    limits = {**profile.limits, **args.time_limit}
    out = args.out or args.out_dir / f"gpu_check_{device_slug(args.dry_run)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "dry_run": args.dry_run,
        "parts": args.parts,
        "limits": limits,
        "peak_tflops": args.peak_tflops,
    }
    report: dict = {"settings": settings | dataclasses.asdict(profile), "parts": {}}
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evf_gpu_check_")))
        args.workdir.mkdir(parents=True, exist_ok=True)
        for name in args.parts:
            report["parts"][name] = run_part(name, args, limits[name], profile.env)
            train = report["parts"].get("train", {}).get("results", {})
            if train.get("rows"):
                report["targets"] = _guarded(lambda t=train: targets(t["rows"], t.get("peak_tflops")))
            out.write_text(json.dumps(report, indent=1))
    print(render(report))
    print(f"\nwrote {out}")
    return 0 if all(p["status"] == "ok" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
