"""Break the `sweeps/shapes_fusion.yaml` results down by expression type.

    evf sweep --grid sweeps/shapes_fusion.yaml          # the sweep itself (~20 min on 2 CPU cores)
    python benchmarks/shapes_fusion.py                  # this: per-type cIoU of every run's best checkpoint

For every run of the sweep directory, the best checkpoint is evaluated on the validation scenes
(every expression of every object), cIoU / gIoU per expression type (colour, colour + shape,
shape, size, position); then mean ± std over seeds per fusion mode. Prints Markdown and writes
``benchmarks/results/shapes_fusion.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import ROOT, per_kind  # noqa: E402


def best_checkpoint(run_dir: Path) -> Path:
    found = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no best-*.ckpt (has the run finished?)")
    return found[-1]


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path, nargs="?", default=ROOT / "runs/sweeps/shapes_fusion")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/shapes_fusion.json")
    args = parser.parse_args()
    runs = json.loads((args.sweep_dir / "sweep.json").read_text())["runs"]
    results = {}
    for name in runs:
        status = json.loads((args.sweep_dir / name / "status.json").read_text())
        ckpt = best_checkpoint(args.sweep_dir / name)
        print(f"{name}: {ckpt.name}", file=sys.stderr, flush=True)
        results[name] = {
            "group": status["group"],
            "wall_time_s": status.get("wall_time_s"),
            "checkpoint": ckpt.name,
            "per_kind": per_kind(ckpt),
        }
    args.out.write_text(json.dumps(results, indent=2))

    groups: dict[str, list[dict]] = defaultdict(list)
    for result in results.values():
        groups[result["group"]].append(result["per_kind"])
    kinds = sorted({k for r in results.values() for k in r["per_kind"]} - {"all"}) + ["all"]
    counts = next(iter(results.values()))["per_kind"]
    print("| fusion | runs | " + " | ".join(f"{k} ({counts[k]['count']})" for k in kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for group, members in groups.items():
        cells = [mean_std([m[k]["ciou"] for m in members]) for k in kinds]
        print(f"| {group} | {len(members)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
