"""Peak memory of one training step of a fine-tuning recipe, at full size, measured on the CPU.

    R=benchmarks/results/finetune_memory_cpu.json      # its rows came from these three commands
    python benchmarks/finetune_memory.py --images 8 --grad-checkpointing true --precision bf16 fp32 --out $R
    python benchmarks/finetune_memory.py --images 1 2 --grad-checkpointing false --precision bf16 fp32 \\
        --out $R --append
    python benchmarks/finetune_memory.py --out $R --append   # the recipe's own step (its batch, its flags)

The recipe's model (encoder, backend, ``encoder_kwargs``, ``lora``, ``trainable``) is built with random
weights as `EVFSAMModule` builds it in embedding-cache mode (no SAM image encoder), and one training
step runs: ``data.batch_size`` images with ``data.max_expressions`` expressions of 20
tokens each, SAM's image features as a bf16 store row of random values, BCE + Dice at 480 x 640,
backward, and an AdamW step over `EVFSAMModule._param_groups` (its first step: the moments are
allocated). The forward runs under bf16 autocast on the CPU, as ``bf16-mixed`` does on a GPU
(``--precision fp32``: without).

Memory is counted two ways, each configuration in a fresh process:

* tensors: `LiveTensorBytes` (a ``TorchDispatchMode``) follows every tensor storage the step creates
  until it is freed (gradients, optimizer states, activations saved for backward, temporaries), on
  top of the parameters and the batch, each rounded up to 512-byte blocks as CUDA's caching
  allocator does; its peak is what ``torch.cuda.max_memory_allocated`` would report for the same
  ops and dtypes (torch's own ``MemTracker`` cannot follow models with frozen parameters);
* the process: peak RSS (the interpreter, libraries, allocator slack: an upper bound).

FLOPs of the step (matmuls, convolutions, attention; forward + backward with the recomputation)
are counted on the meta device (``FlopCounterMode``). docs/finetune.md turns both into the GPU
numbers and states the error.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import weakref
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, autocast, count_flops, machine, run_child  # noqa: E402
from train_throughput import TOKENS, loss_of, low_res_evf, synthetic_batch  # noqa: E402

GIB = 2**30
BLOCK = 512  # CUDA's caching allocator rounds every allocation up to this


def _rounded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive now and at the peak: the storages of ``existing`` (the
    weights and the batch) plus every new storage an op creates inside the mode, until Python frees
    it. An op that returns a view of an existing storage (``weight.t()``, in-place updates) adds
    nothing."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self._seen = WeakIdKeyDictionary()
        self.current = self.peak = 0
        for t in existing:
            self._track(t.untyped_storage())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen:
            return
        size = _rounded(storage.nbytes())
        self._seen[storage] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.current -= size


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes of the distinct storages of ``tensors``, rounded as `LiveTensorBytes` rounds."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(_rounded(n) for n in storages.values())


def step_flops(spec: dict, images: int, grad_checkpointing: bool) -> int:
    """Matmul/conv/attention FLOPs of forward + backward (recomputation included), on meta."""
    meta = torch.device("meta")
    with meta:
        model = build(spec, grad_checkpointing).model.train()
    batch = synthetic_batch(model, images, spec["expressions"], meta)
    image_of = [i for i in range(images) for _ in range(spec["expressions"])]
    return count_flops(lambda: low_res_evf(model, batch, image_of).float().sum().backward())


def recipe(path: Path) -> dict:
    """What the step needs from a training config (paths to weights and data are not read)."""
    config = yaml.safe_load(path.read_text())
    model, data = config["model"], config["data"]["init_args"]
    return {
        "encoder": model["encoder"],
        "backend": model["backend"],
        "encoder_kwargs": model.get("encoder_kwargs") or {},
        "lora": model.get("lora"),
        "trainable": model.get("trainable"),
        "lr": (model.get("optim") or {}).get("lr", 1e-4),
        "images": data["batch_size"],
        "expressions": data.get("max_expressions", 3),
        "accumulate": config["trainer"].get("accumulate_grad_batches", 1),
        "precision": config["trainer"].get("precision"),
    }


def build(spec: dict, grad_checkpointing: bool):
    from evf.module import EVFSAMModule

    return EVFSAMModule(
        spec["encoder"],
        spec["backend"],
        encoder_kwargs={**spec["encoder_kwargs"], "grad_checkpointing": grad_checkpointing},
        trainable=spec["trainable"],
        lora=spec["lora"],
        use_embedding_cache=True,
        num_logged_images=0,
    )


def measure(spec: dict, images: int, grad_checkpointing: bool, precision: str) -> dict:
    """In the child process: FLOPs on meta, then one tracked step on the CPU."""
    cpu = torch.device("cpu")
    flops = step_flops(spec, images, grad_checkpointing)
    torch.manual_seed(0)
    rss_before_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    module = build(spec, grad_checkpointing)
    model = module.model.train()
    batch = synthetic_batch(model, images, spec["expressions"], cpu)
    optimizer = torch.optim.AdamW(module._param_groups(), lr=spec["lr"])
    params = list(model.parameters())
    weights = tensor_bytes(*params, *model.buffers())
    inputs = [t for t in vars(batch).values() if isinstance(t, torch.Tensor)]
    inputs += list(batch.image_features.values()) + batch.masks
    tracker = LiveTensorBytes([*params, *model.buffers(), *inputs])
    start = time.perf_counter()
    with tracker:
        with autocast(cpu, precision):
            loss = loss_of(model, batch, "evf_cache")
        after_forward = tracker.current
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    trainable = [p for p in params if p.requires_grad]
    return {
        "images": images,
        "expressions_per_image": spec["expressions"],
        "tokens": TOKENS,
        "grad_checkpointing": grad_checkpointing,
        "precision": precision,
        "peak_tensor_bytes": tracker.peak,
        "weight_bytes": weights,
        "after_forward_bytes": after_forward,
        "grad_and_adamw_bytes": 3 * tensor_bytes(*trainable),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_model_bytes": rss_before_model,
        "step_seconds": seconds,
        "flops": flops,
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in trainable),
        "machine": machine(),
    }


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/recipes/finetune_custom.yaml")
    parser.add_argument("--images", type=int, nargs="+", default=None, help="default: data.batch_size")
    parser.add_argument("--grad-checkpointing", type=_bool, nargs="+", default=None,
                        help="default: the config's encoder_kwargs.grad_checkpointing")  # fmt: skip
    parser.add_argument("--precision", choices=["bf16", "fp32"], nargs="+", default=["bf16"])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    parser.add_argument("--child", nargs=3, metavar=("IMAGES", "CHECKPOINTING", "PRECISION"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    spec = recipe(args.config)
    if args.child:
        images, checkpointing, precision = args.child
        print(json.dumps(measure(spec, int(images), _bool(checkpointing), precision)))
        return
    images = args.images or [spec["images"]]
    checkpointing = args.grad_checkpointing
    if checkpointing is None:
        checkpointing = [bool(spec["encoder_kwargs"].get("grad_checkpointing", False))]
    rows = []
    for n in images:
        for ckpt in checkpointing:
            for precision in args.precision:
                child = [str(n), str(ckpt).lower(), precision, f"--config={args.config}"]
                rows.append(json.loads(run_child(Path(__file__), child)))
                r = rows[-1]
                print(
                    f"{n} images x {spec['expressions']}, checkpointing {ckpt}, {precision}: tensors "
                    f"{r['peak_tensor_bytes'] / GIB:.2f} GiB, RSS {r['peak_rss_bytes'] / GIB:.2f} GiB, "
                    f"{r['step_seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    out = args.out or RESULTS / "finetune_memory_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        rows = json.loads(out.read_text())["rows"] + rows
    out.write_text(json.dumps({"config": str(args.config), "recipe": spec, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
