"""The ``evf sweep`` and ``evf sweep-report`` tools (registered in `evf.cli.TOOLS`)."""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
from pathlib import Path
from typing import Literal

from evf.sweep.grid import Grid
from evf.sweep.launchers import LocalLauncher, ParallelLauncher, SlurmLauncher
from evf.sweep.report import MANIFEST, write_report
from evf.sweep.runner import RunJob, mark_pending, recorded_with_other_overrides, should_run


def sweep(
    grid: Path | None = None,
    base: Path | None = None,
    launcher: Literal["local", "parallel", "slurm"] = "local",
    out: Path | None = None,
    devices: int | None = None,
    only: str | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    wait: bool = False,
) -> None:
    """Run every configuration of a grid file (skipping finished runs) and write the sweep table.

    Args:
        grid: the grid YAML file (see docs/sweeps.md).
        base: the base LightningCLI config (default: the grid's ``base``).
        launcher: ``local`` (one run after another), ``parallel`` (one run per device at a time) or
            ``slurm`` (one job array; needs submitit).
        out: sweep directory (default: ``runs/sweeps/<grid name>``).
        devices: with ``parallel``: concurrent runs (default: every visible GPU, 1 on CPU).
        only: run only the runs whose name matches this shell pattern (e.g. ``"*seed=0"``); the
            table still lists every run.
        retry_failed: run failed runs again (they resume where they stopped).
        dry_run: print the plan and the fit commands; run nothing, write nothing.
        wait: with ``slurm``: wait for the jobs, then write the table.
    """
    if grid is None:
        raise ValueError("evf sweep needs --grid FILE")
    spec = Grid.from_file(grid)
    base = Path(base or spec.base or "")
    if not base.is_file():
        raise FileNotFoundError(
            f"base config {str(base)!r} not found (pass --base or set `base` in the grid)"
        )
    out = Path(out or Path("runs/sweeps") / spec.name)
    jobs = [RunJob.from_run(run, spec, base, out) for run in spec.expand()]
    selected = [job for job in jobs if only is None or fnmatch.fnmatchcase(job.name, only)]
    if not selected:
        raise ValueError(f"no run of {spec.name} matches --only {only!r}")
    edited = [job.name for job in selected if recorded_with_other_overrides(job)]
    if edited:
        raise ValueError(
            f"{out}: run(s) {', '.join(edited)} were started with other overrides than {grid} now "
            "gives them; delete those run directories or pass another --out (their results would "
            "no longer match the grid)"
        )
    plan = [(job, *should_run(job.run_dir, retry_failed)) for job in selected]
    width = max(len(job.name) for job in selected)
    for job, _, reason in plan:
        print(f"{job.name:<{width}}  {reason}")
    todo = [job for job, run, _ in plan if run]
    if dry_run:
        for job in todo:
            print(f"\n# {job.name}\n{shlex.join(job.command('fit'))}")
        return
    _write_manifest(out, grid, spec, base, jobs)
    if launcher == "slurm":
        submitted = SlurmLauncher(out / "slurm", spec.resources, name=f"evf-sweep-{spec.name}").launch(todo)
        print("submitted SLURM job(s):", " ".join(str(j.job_id) for j in submitted) or "none")
        if not wait:
            print(f"when they have finished: evf sweep-report {out}")
            return
        for job in submitted:
            job.result()
    else:
        (ParallelLauncher(devices) if launcher == "parallel" else LocalLauncher()).launch(todo)
    print(write_report(out))


def _write_manifest(out: Path, grid: Path, spec: Grid, base: Path, jobs: list[RunJob]) -> None:
    """Write ``grid.yaml`` (a copy), ``sweep.json`` (the run order of the table) and pending statuses."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(grid, out / "grid.yaml")
    manifest = {
        "name": spec.name,
        "grid": str(grid),
        "base": str(base),
        "paper_table": spec.paper_table,
        "runs": [job.run_dir.name for job in jobs],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for job in jobs:
        mark_pending(job)


def sweep_report(directory: Path, paper: bool = False) -> None:
    """Write and print the table of a sweep directory (``report.md``, ``report.csv``).

    Args:
        directory: the sweep directory (``--out`` of ``evf sweep``).
        paper: add the paper's published numbers for runs that name a ``paper_row``.
    """
    print(write_report(Path(directory), paper=paper))
