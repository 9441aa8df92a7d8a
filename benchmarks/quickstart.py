"""Time the quickstart and break its validation cIoU down by expression type.

    python benchmarks/quickstart.py     # what `make quickstart` runs (cache + fit), timed, then evaluated
    python benchmarks/quickstart.py --run-dir runs/quickstart/version_0 --no-train

Prints a Markdown report (wall time, learning curve, per-type cIoU/gIoU of the best checkpoint)
and writes it to benchmarks/results/quickstart.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train(extra: list[str]) -> tuple[Path, float, float]:
    """What `make quickstart` runs: the embedding cache, then the fit. Returns the run directory,
    the whole wall time and the cache's share of it."""
    config = ["--config", str(ROOT / "configs/quickstart.yaml")]
    start = time.time()
    subprocess.run([sys.executable, "-m", "evf.cli", "cache-embeddings", *config], check=True, cwd=ROOT)
    cached = time.time()
    subprocess.run([sys.executable, "-m", "evf.cli", "fit", *config, *extra], check=True, cwd=ROOT)
    runs = sorted((ROOT / "runs/quickstart").glob("version_*"), key=os.path.getmtime)
    return runs[-1], time.time() - start, cached - start


def learning_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    ciou = {e.step: e.value for e in events.Scalars("val/ciou")}
    giou = {e.step: e.value for e in events.Scalars("val/giou")}
    return [(step, ciou[step], giou[step]) for step in sorted(ciou)]


def per_kind(ckpt: Path) -> dict[str, dict[str, float]]:
    """cIoU / gIoU per expression kind on the validation split, plus 'all'."""
    from evf.datamodules import ShapesDataModule
    from evf.decode import decode
    from evf.metrics import ReferringIoU
    from evf.module import EVFSAMModule

    # Built with its image encoder (from the config's backend checkpoint) though trained from a cache.
    module = EVFSAMModule.load_from_checkpoint(ckpt, map_location="cpu", use_embedding_cache=False).eval()
    config = module.hparams
    data = ShapesDataModule(
        num_val=100, encoder=config.encoder, tokenizer=config.tokenizer, backend=config.backend, num_workers=0
    )
    metrics: dict[str, ReferringIoU] = defaultdict(ReferringIoU)
    with torch.no_grad():
        for batch in data.val_dataloader()[0]:
            logits = [p.logits for p in decode(module.model, batch)]
            kinds = batch.kinds
            n = 0
            for pred, target in zip(logits, batch.masks, strict=True):
                for p, t in zip(pred, target, strict=True):
                    for key in (kinds[n], "all"):
                        metrics[key].update(p[None] > 0, t[None])
                    n += 1
    return {
        k: {name: float(v) for name, v in m.compute().items()} | {"count": int(m.count)}
        for k, m in metrics.items()
    }


PROBE_TEXTS = ("the red shape", "the blue shape", "the circle", "the square on the left", "the largest shape")


def token_dependence(ckpt: Path, scenes: int = 40) -> dict[str, float]:
    """How much the prompt token follows the image and how much the text: the variance of the
    projected token across ``scenes`` validation images for each fixed text, and across
    `PROBE_TEXTS` for each fixed image (mean over token channels). A model that grounds needs the
    first; a token that depends on the text alone can only say "left" or "every object"."""
    from evf.datamodules.shapes import ShapesDataset
    from evf.module import EVFSAMModule

    model = EVFSAMModule.load_from_checkpoint(
        ckpt, map_location="cpu", use_embedding_cache=False
    ).model.eval()
    preprocessor = model.encoder.preprocessor
    data = ShapesDataset("val", scenes, seed=0, max_expressions=None)
    pixels = torch.stack([preprocessor.transform_image(data.sample(i, 0).image) for i in range(scenes)])
    tokens = preprocessor.tokenize(list(PROBE_TEXTS))
    with torch.no_grad():
        out = torch.stack(
            [
                model.prompt_tokens(
                    pixels, ids.expand(scenes, -1), mask.expand(scenes, -1), torch.arange(scenes)
                )[:, 0]
                for ids, mask in zip(
                    tokens["input_ids"][:, None], tokens["attention_mask"][:, None], strict=True
                )
            ]
        )  # [texts, images, D]
    return {
        "across_images": round(float(out.var(1).mean()), 6),
        "across_texts": round(float(out.var(0).mean()), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, help="an existing quickstart run (version_N folder)")
    parser.add_argument("--no-train", action="store_true", help="only evaluate --run-dir")
    args, extra = parser.parse_known_args()
    wall = cache = None
    run_dir = args.run_dir
    if not args.no_train:
        run_dir, wall, cache = train(extra)
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))[-1]
    report = {
        "run_dir": str(run_dir),
        "wall_seconds": wall,
        "cache_seconds": cache,
        "threads": torch.get_num_threads(),
        "curve": learning_curve(run_dir),
        "checkpoint": best.name,
        "per_kind": per_kind(best),
        "token_variance": token_dependence(best),
    }
    out = ROOT / "benchmarks/results/quickstart.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wall time: {wall:.0f} s (cache {cache:.0f} s)" if wall else "wall time: (not trained here)")
    print("\n| step | val cIoU | val gIoU |\n|---|---|---|")
    for step, c, g in report["curve"]:
        print(f"| {step} | {c:.3f} | {g:.3f} |")
    print("\n| expression type | expressions | cIoU | gIoU |\n|---|---|---|---|")
    for kind, m in sorted(report["per_kind"].items()):
        print(f"| {kind} | {m['count']} | {m['ciou']:.3f} | {m['giou']:.3f} |")
    variance = report["token_variance"]
    print(
        f"\nprompt token variance across images (fixed text): {variance['across_images']:.5f}; "
        f"across texts (fixed image): {variance['across_texts']:.5f}"
    )


if __name__ == "__main__":
    main()
