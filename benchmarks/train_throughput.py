"""Training throughput: a naive loop vs EVF (encoding on the fly) vs EVF with the embedding cache.

    python benchmarks/train_throughput.py --models small --images 2 --expressions 1 3      # CPU
    python benchmarks/train_throughput.py --device cuda --precision bf16 --images 16 --expressions 1 3 \\
        --warmup 3 --iterations 20                                                          # one GPU

One training step (forward, BCE + Dice at the original resolution, backward, optimizer step) on the
same synthetic batch (``--images`` images of 480 x 640, ``--expressions`` expressions of 20 tokens
each), three ways, each in a fresh process (so peak memory is its own):

* ``naive``: what EVF-SAM's released code does per step: the SAM image encoder runs on every step,
  one image at a time (``get_visual_embs``), BEIT-3 runs once over all expressions, then one
  prompt-encoder + mask-decoder call per expression (the released code batches the decoder per
  image; the decoder is ~1% of the step either way).
* ``evf``: `evf.decode.decode`, what ``training_step`` runs: the image encoder once over the batch
  under ``no_grad`` (`EVFSAM.encode_images`), BEIT-3 once, one decoder call for all expressions.
* ``evf_cache``: the same without the image encoder (never built): bf16 features as the store
  holds them, cast to the decoder's dtype in the step. Reading them from the store is timed apart
  (``read ms/img``: page-cache-hot memory-map reads; in training, DataLoader workers do this).

Weights are random (timing does not depend on them); data loading and preprocessing are excluded.
The first step is timed apart (``first_step_seconds``: with ``--compile``, which compiles the
multimodal encoder as ``--model.compile_encoder true`` does, it includes the compilation); then
``--warmup`` untimed steps, then ``--iterations`` timed ones.
Model FLOPs per step are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
device (matmuls, convolutions, attention; forward + backward; the optimizer is not counted).
Prints a Markdown table and writes ``benchmarks/results/train_throughput_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODELS,
    RESULTS,
    autocast,
    count_flops,
    peak_bytes,
    peak_tflops,
    reset_peak,
    run_child,
    timed,
    write_rows,
)

VARIANTS = ("naive", "evf", "evf_cache")
TOKENS, HEIGHT, WIDTH = 20, 480, 640


def synthetic_batch(model, images: int, expressions: int, device: torch.device):
    """An `evf.batch.Batch` with random content (expressions per image equal): the batch contract of
    docs/architecture.md, as `BatchBuilder` would build it."""
    from evf.batch import Batch, PromptGroup

    gen = torch.Generator().manual_seed(0)
    n = images * expressions
    spec, enc = model.backend.info.image, model.encoder.preprocessor.image
    vocab = model.encoder.text_embed.tokens.num_embeddings
    batch = Batch(
        encoder_pixels=torch.randn(images, 3, enc.size, enc.size, generator=gen),
        input_ids=torch.randint(4, vocab, (n, TOKENS), generator=gen),
        attention_mask=torch.ones(n, TOKENS, dtype=torch.long),
        image_index=torch.arange(images).repeat_interleave(expressions),
        groups=[PromptGroup(torch.arange(n))],
        input_sizes=[spec.resized_size(HEIGHT, WIDTH)] * images,
        original_sizes=[(HEIGHT, WIDTH)] * images,
        texts=[""] * n,
        image_ids=[str(i) for i in range(images)],
        masks=[torch.rand(expressions, HEIGHT, WIDTH, generator=gen) > 0.7 for _ in range(images)],
    )
    if model.backend.has_image_encoder:
        batch.sam_pixels = torch.randn(images, 3, spec.size, spec.size, generator=gen)
    else:
        shapes = model.backend.feature_shapes()
        features = {k: torch.randn(images, *s, generator=gen) for k, s in shapes.items()}
        batch.image_features = {k: v.bfloat16() for k, v in features.items()}  # as a bf16 store holds them
    return batch.to(device)


def low_res_naive(model, batch, image_of: list[int]) -> torch.Tensor:
    """Image encoder per image, BEIT-3 once, one decoder call per expression -> ``[N,1,h,w]``."""
    with torch.no_grad():
        features = [model.backend.encode_image(batch.sam_pixels[i : i + 1]) for i in range(batch.num_images)]
    inputs = (batch.encoder_pixels, batch.input_ids, batch.attention_mask, batch.image_index)
    tokens = model.prompt_tokens(*inputs)
    zero = torch.zeros(1, dtype=torch.long, device=tokens.device)
    outs = [model.backend.decode(features[i], zero, tokens[n : n + 1]).logits for n, i in enumerate(image_of)]
    return torch.cat(outs)


def low_res_evf(model, batch, image_of: list[int]) -> torch.Tensor:
    """What `evf.decode.decode` runs before postprocessing (one group of text prompts): the image
    features in the decoder's dtype, BEIT-3 once over every expression, one decoder call."""
    from evf.decode import image_features

    dtype = next(model.backend.mask_decoder.parameters()).dtype
    features = {k: v.to(dtype) for k, v in image_features(model, batch).items()}
    inputs = (batch.encoder_pixels, batch.input_ids, batch.attention_mask, batch.image_index)
    return model.backend.decode(features, batch.image_index, model.prompt_tokens(*inputs)).logits


def logits_naive(model, batch) -> list[torch.Tensor]:
    low_res = low_res_naive(model, batch, batch.image_index.tolist())
    sizes = zip(batch.input_sizes, batch.original_sizes, strict=True)
    index = batch.image_index
    return [model.backend.postprocess(low_res[index == i], a, b) for i, (a, b) in enumerate(sizes)]


def loss_of(model, batch, variant: str) -> torch.Tensor:
    """The training loss: EVF's variants go through `evf.decode.decode`, what `training_step` runs."""
    from evf.decode import decode
    from evf.losses import mask_losses

    if variant == "naive":
        logits = logits_naive(model, batch)
    else:
        logits = [p.logits for p in decode(model, batch)]
    terms = mask_losses(logits, batch.masks)
    return terms["bce"] + terms["dice"]


def build(name: str, variant: str, device: torch.device):
    """The model, created on ``device`` (a GPU initialises BEIT-3-L + SAM-H in a second, a CPU in
    many), in training mode (frozen parts stay in eval mode)."""
    import evf

    encoder, backend = MODELS[name]
    kwargs = {"image_encoder": variant != "evf_cache"}
    with device:
        model = evf.create_model(encoder, backend, backend_kwargs=kwargs)
    return model.to(device).train()


def store_read_ms(model, images: int) -> float:
    """Milliseconds to read one image's features from an embedding store (page cache hot)."""
    from evf.cache import EmbeddingStore, ShardWriter
    from evf.cache.keys import CacheKey

    shapes = model.backend.feature_shapes()
    key = CacheKey("benchmark", {}, "0" * 64, {}, {k: list(v) for k, v in shapes.items()})
    with tempfile.TemporaryDirectory() as root:
        writer = ShardWriter(Path(root), key, "bf16", 0, 1, [f"img{i}" for i in range(images)])
        for i in range(images):
            writer.write(
                i, {k: torch.randn(s) for k, s in shapes.items()}, f"img{i}", f"h{i}", (HEIGHT, WIDTH)
            )
        writer.flush()
        store = EmbeddingStore(root)
        times = timed(lambda: [store.read(f"h{i}") for i in range(images)], torch.device("cpu"), 1, 5)
    return 1000 * min(times) / images


def measure(args: argparse.Namespace, name: str, variant: str, expressions: int) -> dict:
    """In the child process: FLOPs on meta, then build, warm up and time on the real device."""
    device, meta = torch.device(args.device), torch.device("meta")
    with meta:
        meta_model = build(name, variant, meta)
    meta_batch = synthetic_batch(meta_model, args.images, expressions, meta)
    # Low-res logits only: postprocessing and the loss add no matmul FLOPs (and boolean indexing
    # cannot run on the meta device).
    forward = low_res_naive if variant == "naive" else low_res_evf
    image_of = [i for i in range(args.images) for _ in range(expressions)]
    flops = count_flops(lambda: forward(meta_model, meta_batch, image_of).float().sum().backward())
    torch.manual_seed(0)
    model = build(name, variant, device)
    if args.compile:  # as `EVFSAMModule(compile_encoder=True)`: the multimodal encoder, in place
        model.encoder.compile(backend=args.compile_backend)
    batch = synthetic_batch(model, args.images, expressions, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (
        torch.optim.AdamW(params, lr=1e-5) if args.optimizer == "adamw" else torch.optim.SGD(params, lr=1e-5)
    )
    reset_peak(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            loss = loss_of(model, batch, variant)
        loss.backward()
        optimizer.step()

    first = timed(step, device, 0, 1)[0]  # compilation included, with --compile
    times = timed(step, device, args.warmup, args.iterations)
    result = {
        "model": name, "variant": variant, "images": args.images, "expressions_per_image": expressions,
        "compiled": args.compile, "first_step_seconds": first,
        "seconds": times, "step_seconds": statistics.median(times), "flops": flops,
        "peak_bytes": peak_bytes(device), "trainable_params": sum(p.numel() for p in params),
        "params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip
    if variant == "evf_cache":
        result["read_ms_per_image"] = store_read_ms(model, args.images)
    return result


def table(rows: list[dict], peak: float | None) -> str:
    head = "| model | expr/img | variant | s/step | samples/s | expr/s | vs naive | peak mem | GFLOP/step | "
    head += "MFU |" if peak else "GFLOP/s |"
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    naive = {
        (r["model"], r["expressions_per_image"]): r["step_seconds"] for r in rows if r["variant"] == "naive"
    }
    for r in rows:
        s, e = r["step_seconds"], r["expressions_per_image"]
        base = naive.get((r["model"], e))
        ratio = f"{base / s:.1f}x" if base else "-"
        rate = r["flops"] / s
        last = f"{100 * rate / (peak * 1e12):.0f}%" if peak else f"{rate / 1e9:.0f}"
        read = f" (+{r['read_ms_per_image']:.1f} ms/img read)" if "read_ms_per_image" in r else ""
        read += ", compiled" if r.get("compiled") else ""
        lines.append(
            f"| {r['model']} | {e} | {r['variant']}{read} | {s:.2f} | {r['images'] / s:.3f} | "
            f"{r['images'] * e / s:.3f} | {ratio} | {r['peak_bytes'] / 2**30:.2f} GiB | "
            f"{r['flops'] / 1e9:.0f} | {last} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["small"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--images", type=int, default=2, help="images per step")
    parser.add_argument("--expressions", type=int, nargs="+", default=[1, 3], help="expressions per image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast (bf16-mixed)"
    )
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                        help="sgd keeps no state (less memory on a small CPU machine)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first step")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the multimodal encoder")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend")
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="bf16 peak for MFU (default: by GPU name)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument(
        "--child", nargs=3, metavar=("MODEL", "VARIANT", "EXPRESSIONS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        name, variant, expressions = args.child
        print(json.dumps(measure(args, name, variant, int(expressions))))
        return
    shared = [
        f"--{k}={getattr(args, k)}"
        for k in ("images", "device", "precision", "optimizer", "warmup", "iterations", "compile_backend")
    ] + (["--compile"] if args.compile else [])
    rows = []
    for name in args.models:
        for expressions in args.expressions:
            for variant in args.variants:
                rows.append(json.loads(run_child(Path(__file__), [name, variant, str(expressions), *shared])))
                print(
                    f"{name} x{expressions} {variant}: {rows[-1]['step_seconds']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
    peak = peak_tflops(torch.device(args.device), args.peak_tflops)
    print(table(rows, peak))
    out = args.out or RESULTS / f"train_throughput_{torch.device(args.device).type}.json"
    write_rows(out, args, rows, peak_tflops=peak)


if __name__ == "__main__":
    main()
