"""Generalized referring on shapes: the quickstart's recipe with 20% no-target and 20% multi-target
expressions, presence head on vs off.

    python benchmarks/generalized.py                   # cache (if missing) + both fits, then the report
    python benchmarks/generalized.py --no-train        # the report of the last runs

Each run is `evf fit --config configs/quickstart.yaml` with
``--data.init_args.no_target_rate=0.2 --data.init_args.multi_target_rate=0.2`` (and
``--model.presence=true`` for "on"). The report reads the best checkpoint's validation metrics
from TensorBoard: per split (cIoU, gIoU, N-acc, T-acc, Pr@0.7/0.8/0.9), per expression kind, and per
group of kinds (single-target, no-target, multi-target). Writes benchmarks/results/generalized.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATES = ["--data.init_args.no_target_rate=0.2", "--data.init_args.multi_target_rate=0.2"]
RUNS = {"off": [], "on": ["--model.presence=true"]}
METRICS = ("ciou", "giou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9")
SPLIT = "shapes/val"


def command(name: str) -> list[str]:
    run = f"runs/generalized/{name}"
    return [sys.executable, "-m", "evf.cli", "fit", "--config", "configs/quickstart.yaml", *RATES,
            *RUNS[name], f"--trainer.default_root_dir={run}", "--trainer.logger.init_args.save_dir=runs",
            f"--trainer.logger.init_args.name=generalized_{name}"]  # fmt: skip


def train(name: str) -> float:
    start = time.time()
    subprocess.run(command(name), check=True, cwd=ROOT)
    return time.time() - start


def best_validation(name: str) -> tuple[int, dict[str, float]]:
    """The step with the best pooled val/ciou, and every val/ scalar logged at that step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = sorted((ROOT / f"runs/generalized_{name}").glob("version_*"), key=os.path.getmtime)[-1]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    best = max(events.Scalars("val/ciou"), key=lambda e: e.value).step
    values = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith("val/"):
            at = [e.value for e in events.Scalars(tag) if e.step == best]
            if at:
                values[tag] = at[-1]
    return best, values


def report(results: dict) -> str:
    lines = ["| presence | kind | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, result in results.items():
        values = result["metrics"]
        kinds = sorted({tag.split("/")[3] for tag in values if tag.count("/") == 4})
        for kind in ["(all)", *kinds]:
            prefix = f"val/{SPLIT}/" if kind == "(all)" else f"val/{SPLIT}/{kind}/"
            cells = [_cell(values.get(prefix + m)) for m in METRICS]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-train", action="store_true", help="report the last runs only")
    args = parser.parse_args()
    wall = {}
    if not args.no_train:
        cache = ["--config", "configs/quickstart.yaml"]
        subprocess.run([sys.executable, "-m", "evf.cli", "cache-embeddings", *cache], check=True, cwd=ROOT)
        wall = {name: train(name) for name in RUNS}
    results = {}
    for name in RUNS:
        step, values = best_validation(name)
        results[name] = {"command": " ".join(command(name)[1:]), "best_step": step, "wall_s": wall.get(name),
                         "metrics": values}  # fmt: skip
    out = ROOT / "benchmarks/results/generalized.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


if __name__ == "__main__":
    main()
