"""Can a tiny BEIT-3 learn to say *where* something is? A probe of the encoder alone, from random init.

With SAM frozen, EVF-SAM's one prompt token has to tell the mask decoder where the referent is, so
the encoder's feature must carry a position. This probe strips everything else away: shapes scenes
with a single object, the text "the shape", and a linear head on the encoder's feature regressing
the object's centre (L1, in fractions of the image side). The constant predictor (the training
median) is the bar to beat. Each architecture row trains from the same seed on the same batches.

    .venv/bin/python benchmarks/localization_probe.py            # the table of benchmarks/quickstart.md
    .venv/bin/python benchmarks/localization_probe.py --steps 200 --rows sub_ln   # a quick look

Writes ``benchmarks/results/localization_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from evf.datamodules.shapes import ShapesDataset
from evf.encoders import create_encoder

ROWS = {
    "sub_ln": {"sub_ln": True, "position_init": "random"},  # BEIT-3 as released, scaled down
    "sub_ln+sincos": {"sub_ln": True, "position_init": "sincos"},
    "no_sub_ln": {"sub_ln": False, "position_init": "random"},
    "no_sub_ln+sincos": {"sub_ln": False, "position_init": "sincos"},  # the shipped beit3_tiny
}
"""Row name -> ``beit3_tiny`` architecture arguments."""


def centre_data(split: str, count: int, preprocessor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder pixels ``[n,3,E,E]`` and object centres ``[n,2]`` (x, y as fractions) of one-object scenes."""
    scenes = ShapesDataset(split, count, seed=0, max_expressions=1, num_objects=(1, 1))
    pixels, centres = [], []
    for i in range(count):
        sample = scenes.sample(i, epoch=0)
        ys, xs = np.nonzero(sample.masks[0])
        height, width = sample.masks.shape[1:]
        pixels.append(preprocessor.transform_image(sample.image))
        centres.append((xs.mean() / width, ys.mean() / height))
    return torch.stack(pixels), torch.tensor(centres, dtype=torch.float32)


def train_row(architecture: dict, data: dict, steps: int, batch_size: int, lr: float, every: int) -> dict:
    """Train encoder + head on the centres; the validation error every ``every`` steps."""
    torch.manual_seed(0)
    # late fusion reads the image [CLS] of an image-only pass: no text can hint at the answer
    encoder = create_encoder("beit3_tiny", fusion="late", **architecture)
    head = nn.Linear(encoder.feature_dim, 2)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    tokens = encoder.preprocessor.tokenize(["the shape"] * batch_size)
    train_pixels, train_centres = data["train"]
    val_pixels, val_centres = data["val"]
    val_tokens = encoder.preprocessor.tokenize(["the shape"] * len(val_pixels))
    draws = torch.Generator().manual_seed(1)
    curve, began = [], time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / 50)  # a short warmup, then constant
        pick = torch.randint(len(train_pixels), (batch_size,), generator=draws)
        feature = encoder(
            train_pixels[pick], tokens["input_ids"], tokens["attention_mask"], torch.arange(batch_size)
        )
        loss = (head(feature) - train_centres[pick]).abs().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            encoder.eval()
            with torch.no_grad():
                index = torch.arange(len(val_pixels))
                feature = encoder(val_pixels, val_tokens["input_ids"], val_tokens["attention_mask"], index)
                error = float((head(feature) - val_centres).abs().sum(1).mean())
            encoder.train()
            curve.append({"step": step, "val_error": round(error, 4)})
            print(f"  step {step:5d}  val error {error:.3f}", flush=True)
    return {"architecture": architecture, "curve": curve, "seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--output", default="benchmarks/results/localization_probe.json")
    args = parser.parse_args()
    preprocessor = create_encoder("beit3_tiny").preprocessor
    data = {"train": centre_data("train", 1600, preprocessor), "val": centre_data("val", 200, preprocessor)}
    constant = float((data["val"][1] - data["train"][1].median(0).values).abs().sum(1).mean())
    print(f"constant predictor: val error {constant:.3f}")
    results = {}
    for name in args.rows:
        print(f"{name}: {ROWS[name]}", flush=True)
        results[name] = train_row(ROWS[name], data, args.steps, args.batch_size, args.lr, args.every)
    report = {
        "task": "regress the centre of the one object of a shapes scene from the image [CLS] (late fusion)",
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "train_scenes": 1600,
        "val_scenes": 200, "constant_val_error": round(constant, 4), "rows": results,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    steps = [str(point["step"]) for point in results[args.rows[0]]["curve"]]
    print(f"\n| architecture | {' | '.join('step ' + s for s in steps)} |")
    for name, row in results.items():
        errors = [f"{point['val_error']:.3f}" for point in row["curve"]]
        print(f"| {name} | {' | '.join(errors)} |")
    print(f"constant predictor: {constant:.3f}; written {args.output}")


if __name__ == "__main__":
    main()
