"""Does an encoder *ground* a referring expression? A probe of the encoder alone, SAM taken out.

The quickstart's prompt token has to tell SAM's decoder where the referent is. This probe asks the
encoder for exactly that, with the most direct signal there is: shapes scenes of 3-5 objects, every
referring expression of the task, early fusion, and a linear head on the encoder's feature
regressing the referent's centroid (L1, in fractions of the image side), fine-tuned together. Per
expression type, the validation error against the constant predictor (the training median) says
which words the encoder learns to bind to a place, and how fast.

    .venv/bin/python benchmarks/grounding_probe.py                      # the shipped beit3_tiny, ~9 min
    .venv/bin/python benchmarks/grounding_probe.py --checkpoint none    # the same from random init
    .venv/bin/python benchmarks/grounding_probe.py --steps 1600 --save /tmp/grounded.pth

``--save`` writes the fine-tuned encoder in the checkpoint's own format (its other tensors kept), so
that ``evf fit --config configs/quickstart.yaml --model.encoder_checkpoint /tmp/grounded.pth`` shows
what the quickstart reaches once its encoder grounds. That file has seen the task's referents: a
diagnostic, never an encoder to ship (`evf pretrain-encoder` sees captions only). Writes
``benchmarks/results/grounding_probe.json``. Results: benchmarks/quickstart.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evf.datamodules.shapes import ShapesDataset
from evf.encoders import create_encoder

SHIPPED = "evf/assets/beit3_tiny_shapes.pth"
ARCHITECTURE = {"sub_ln": False, "position_init": "sincos"}  # the shipped file's (its card)


def referent_data(split: str, count: int, preprocessor) -> dict:
    """Every expression of ``count`` scenes: encoder pixels ``[S,3,E,E]``, its scene, text, type and
    referent centroid ``(x, y)`` as fractions of the image."""
    scenes = ShapesDataset(split, count, seed=0, max_expressions=None)
    pixels, scene, texts, kinds, centres = [], [], [], [], []
    for i in range(count):
        record = scenes.scene(i)
        height, width = record.image.shape[:2]
        pixels.append(preprocessor.transform_image(record.image))
        for obj, mask in zip(record.objects, record.masks, strict=True):
            ys, xs = np.nonzero(mask)
            for expression in obj.expressions:
                scene.append(i)
                texts.append(expression.text)
                kinds.append(expression.kind)
                centres.append((xs.mean() / width, ys.mean() / height))
    return {
        "pixels": torch.stack(pixels), "scene": torch.tensor(scene), "texts": texts, "kinds": kinds,
        "centres": torch.tensor(centres, dtype=torch.float32),
    }  # fmt: skip


def per_kind(errors: torch.Tensor, kinds: list[str]) -> dict[str, float]:
    out = {"all": round(float(errors.mean()), 4)}
    for kind in sorted(set(kinds)):
        out[kind] = round(float(errors[[k == kind for k in kinds]].mean()), 4)
    return out


def evaluate(encoder, head: nn.Module, data: dict) -> torch.Tensor:
    """L1 error of every validation expression, in chunks."""
    encoder.eval()
    tokens = encoder.preprocessor.tokenize(data["texts"])
    errors = []
    with torch.no_grad():
        for start in range(0, len(data["texts"]), 256):
            rows = slice(start, start + 256)
            scene = data["scene"][rows]
            feature = encoder(
                data["pixels"][scene], tokens["input_ids"][rows], tokens["attention_mask"][rows],
                torch.arange(len(scene)),
            )  # fmt: skip
            errors.append((head(feature) - data["centres"][rows]).abs().sum(1))
    encoder.train()
    return torch.cat(errors)


def train(encoder, data: dict, steps: int, batch_size: int, lr: float, every: int) -> tuple[nn.Module, list]:
    """Encoder + head on the centroids; expression types drawn uniformly (as the training data
    does), then an expression of that type."""
    torch.manual_seed(0)
    head = nn.Linear(encoder.feature_dim, 2)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    train_data, val_data = data["train"], data["val"]
    by_kind: dict[str, list[int]] = {}
    for row, kind in enumerate(train_data["kinds"]):
        by_kind.setdefault(kind, []).append(row)
    kinds = sorted(by_kind)
    draws = torch.Generator().manual_seed(1)
    curve, began = [], time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 50)  # a short warmup, then constant
        picked_kinds = torch.randint(len(kinds), (batch_size,), generator=draws).tolist()
        rows = [
            by_kind[kinds[k]][int(torch.randint(len(by_kind[kinds[k]]), (1,), generator=draws))]
            for k in picked_kinds
        ]
        tokens = encoder.preprocessor.tokenize([train_data["texts"][r] for r in rows])
        rows = torch.tensor(rows)
        feature = encoder(
            train_data["pixels"][train_data["scene"][rows]], tokens["input_ids"], tokens["attention_mask"],
            torch.arange(batch_size),
        )  # fmt: skip
        loss = (head(feature) - train_data["centres"][rows]).abs().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            errors = per_kind(evaluate(encoder, head, val_data), val_data["kinds"])
            curve.append({"step": step, "seconds": round(time.perf_counter() - began), **errors})
            print(f"  step {step:5d}  " + "  ".join(f"{k} {v:.3f}" for k, v in errors.items()), flush=True)
    return head, curve


def save_encoder(encoder, checkpoint: Path, out: Path) -> None:
    """``checkpoint`` with the encoder's tensors replaced by the fine-tuned ones (unilm's names)."""
    from evf.encoders.beit3.checkpoint import unilm_beit3_state

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = unilm_beit3_state(encoder.state_dict(), "grounding probe")
    saved["model"].update({k: v.detach().clone() for k, v in state.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=SHIPPED, help="a beit3_tiny file, or 'none' (random init)")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--save", type=Path, help="write the fine-tuned encoder here (a diagnostic)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/grounding_probe.json"))
    args = parser.parse_args()
    checkpoint = None if args.checkpoint == "none" else Path(args.checkpoint)
    if args.save is not None and checkpoint is None:
        parser.error("--save needs --checkpoint: the file keeps that checkpoint's other tensors")
    torch.manual_seed(0)
    encoder = create_encoder("beit3_tiny", fusion="early", checkpoint=checkpoint, **ARCHITECTURE)
    data = {
        "train": referent_data("train", 1600, encoder.preprocessor),
        "val": referent_data("val", 100, encoder.preprocessor),
    }
    median = data["train"]["centres"].median(0).values
    constant = per_kind((data["val"]["centres"] - median).abs().sum(1), data["val"]["kinds"])
    print(f"{len(data['train']['texts'])} training expressions; constant predictor: {constant}")
    head, curve = train(encoder, data, args.steps, args.batch_size, args.lr, args.every)
    if args.save is not None:
        save_encoder(encoder, checkpoint, args.save)
        print(f"wrote {args.save} (it has seen the task's referents: a diagnostic only)")
    report = {
        "task": "regress the referent's centroid from the early-fusion feature (L1, image fractions)",
        "checkpoint": None if checkpoint is None else str(checkpoint), "architecture": ARCHITECTURE,
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "train_scenes": 1600,
        "val_scenes": 100, "constant": constant, "curve": curve, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
