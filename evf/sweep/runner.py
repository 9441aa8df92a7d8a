"""One sweep run: ``evf fit``, then ``evf validate`` / ``evf test`` on its best or last checkpoint.

Every phase is a normal LightningCLI invocation in a subprocess (``python -m evf.cli SUBCOMMAND
--config BASE --key=value ...``). The run directory holds:

* ``config.yaml``: the combined config of the fit (saved by LightningCLI);
* ``log.txt``: stdout and stderr of every phase, each preceded by its command line;
* ``status.json``: pending / running / done / failed, the phase, the error (last stderr lines),
  wall time (summed over attempts), parameter counts and metrics;
* ``results.json``: written from inside the runs by `RecordResults`;
* ``checkpoints/``, TensorBoard events (fit in the run directory, evaluation in ``eval/``, the
  sweep's hyperparameters with the headline metrics in ``hparams/``).

A rerun resumes: a finished fit is not repeated, an interrupted fit restarts from
``checkpoints/last.ckpt``, and an evaluation already recorded is not run again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evf.sweep.grid import Grid, Run, format_value, override_flags

STATUS_FILE = "status.json"
RESULTS_FILE = "results.json"
LOG_FILE = "log.txt"
TAIL_LINES = 40
STOP_GRACE_S = 60
MAX_ERROR_CHARS = 300
EVAL_STAGES = ("validate", "test")
INTERRUPTED = ("Detected KeyboardInterrupt", "SIGTERMException")  # Lightning's words for a stop from outside
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)  # SIGUSR2: submitit's time-limit warning
_ERROR_LINE = re.compile(r"^([\w.]+(Error|Exception|Interrupt)\b|error:)")


class RunInterrupted(Exception):
    """A phase was stopped from outside (Ctrl-C, SIGTERM, a SLURM time limit): resume it later."""


class RunFailed(Exception):
    """A phase exited non-zero (or ended without finishing); carries a one-line summary and the tail."""

    def __init__(self, phase: str, summary: str, tail: list[str]) -> None:
        super().__init__(f"{phase}: {summary}")
        self.tail = tail


@dataclass
class RunJob:
    """Everything one run needs; picklable, so a SLURM array task can receive it.

    Attributes:
        name, group, paper_row: see `evf.sweep.grid.Run`.
        run_dir: the run's own directory.
        base: the base LightningCLI config.
        overrides: dotted key -> value, passed as flags after ``--config base``.
        validate, test: evaluate the chosen checkpoint after fit.
        checkpoint: ``best`` (falls back to last when there is none) or ``last``.
        env: extra environment of the subprocesses (the launcher's device selection).
    """

    name: str
    run_dir: Path
    base: Path
    overrides: dict[str, Any]
    group: str = ""
    paper_row: str | None = None
    validate: bool = True
    test: bool = False
    checkpoint: str = "best"
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_run(cls, run: Run, grid: Grid, base: Path, out: Path) -> RunJob:
        return cls(
            name=run.name,
            run_dir=(out / run.dirname).resolve(),
            base=base.resolve(),
            overrides=run.overrides,
            group=run.group,
            paper_row=run.paper_row,
            validate=grid.validate,
            test=grid.test,
            checkpoint=grid.checkpoint,
        )

    def command(self, subcommand: str, ckpt_path: str | None = None) -> list[str]:
        """The full ``python -m evf.cli`` command line of one phase."""
        version = "" if subcommand == "fit" else "eval"
        logger = {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {
                "save_dir": str(self.run_dir),
                "name": "",
                "version": version,
                "default_hp_metric": False,
            },
        }
        record = {"path": str(self.run_dir / RESULTS_FILE)}
        callbacks = [{"class_path": "evf.sweep.callbacks.RecordResults", "init_args": record}]
        if subcommand == "fit":
            callbacks.append({"class_path": "evf.sweep.callbacks.FailOnNonFiniteLoss"})
        cmd = [sys.executable, "-m", "evf.cli", subcommand, "--config", str(self.base)]
        cmd += ["--trainer.enable_progress_bar=false", *override_flags(self.overrides)]
        cmd += [f"--trainer.default_root_dir={self.run_dir}", f"--trainer.logger={json.dumps(logger)}"]
        cmd += [f"--trainer.callbacks+={json.dumps(c)}" for c in callbacks]
        if ckpt_path:
            cmd.append(f"--ckpt_path={ckpt_path}")
        return cmd


# ---- status and results files --------------------------------------------------------------------
def read_results(run_dir: Path) -> dict[str, Any]:
    """``<run_dir>/results.json`` as written by `evf.sweep.callbacks.RecordResults` ({} when absent)."""
    path = Path(run_dir) / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``status.json``, or None when it has none."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Replace ``status.json`` atomically (a reader never sees half a file)."""
    path = Path(run_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, default=str))
    os.replace(tmp, path)


def mark_pending(job: RunJob) -> None:
    """Give a run that has no status yet a ``pending`` one, so the table lists it."""
    if read_status(job.run_dir) is None:
        write_status(job.run_dir, {**_identity(job), "status": "pending"})


def should_run(run_dir: Path, retry_failed: bool = False) -> tuple[bool, str]:
    """Whether a (re)invocation runs this run, and why: ``start``, ``resume``, ``retry`` or a skip reason."""
    status = read_status(run_dir) or {"status": "pending"}
    state = status["status"]
    if state == "done":
        return False, "done"
    if state == "failed" and not retry_failed:
        return False, "failed (rerun with --retry_failed true)"
    if state == "running" and _alive_here(status):
        return False, "running (its process is alive)"
    return True, {"pending": "start", "running": "resume", "failed": "retry"}[state]


def recorded_with_other_overrides(job: RunJob) -> bool:
    """Whether ``job``'s directory holds a run started with other overrides (an edited grid)."""
    status = read_status(job.run_dir)
    if status is None or "overrides" not in status:
        return False
    as_recorded = json.loads(json.dumps(job.overrides, default=str))  # as status.json stores them
    return status["overrides"] != as_recorded


def _alive_here(status: dict[str, Any]) -> bool:
    """Whether the runner or the phase process recorded in ``status`` still runs on this machine."""
    if status.get("host") != socket.gethostname():
        return False  # another machine (e.g. a SLURM node): treated as interrupted
    pids = {status.get("pid"), status.get("child_pid")} - {None, os.getpid()}
    return any(_pid_alive(int(pid)) for pid in pids)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _identity(job: RunJob) -> dict[str, Any]:
    return {"name": job.name, "group": job.group, "paper_row": job.paper_row, "overrides": job.overrides}


# ---- execution -----------------------------------------------------------------------------------
def execute(job: RunJob) -> dict[str, Any]:
    """Run (or resume) every phase of ``job`` and return its final status.

    A failing phase marks the run failed with its error; an interruption (Ctrl-C, SIGTERM, a
    SLURM time limit) leaves it ``running``, which the next invocation resumes.
    """
    previous = read_status(job.run_dir) or {}
    if previous.get("status") == "done":  # e.g. a requeued SLURM task
        return previous
    job.run_dir.mkdir(parents=True, exist_ok=True)
    status = {**previous, **_identity(job)}
    status.update(
        status="running",
        error=None,
        error_tail=[],
        host=socket.gethostname(),
        pid=os.getpid(),
        attempts=status.get("attempts", 0) + 1,
        started=_now(),
    )
    write_status(job.run_dir, status)
    start = time.monotonic()
    try:
        _run_phases(job, status)
        status.update(status="done", phase=None)
    except RunFailed as err:
        status.update(status="failed", error=str(err), error_tail=err.tail)
    except RunInterrupted as err:
        status.update(error=f"interrupted during {err}: rerun to resume")  # stays "running"
    results = read_results(job.run_dir)
    status["params"] = results.get("params")
    status["metrics"] = {
        k.removeprefix("metrics_"): v["values"] for k, v in results.items() if k.startswith("metrics_")
    }
    status.update(wall_time_s=status.get("wall_time_s", 0.0) + time.monotonic() - start, finished=_now())
    write_status(job.run_dir, status)
    if status["status"] == "done":
        log_hparams(job, status)
    return status


def _run_phases(job: RunJob, status: dict[str, Any]) -> None:
    results = read_results(job.run_dir)
    if "fit" not in results:
        last = job.run_dir / "checkpoints" / "last.ckpt"
        _phase(job, status, "fit", str(last) if last.exists() else None)
        results = read_results(job.run_dir)
        if "fit" not in results:
            raise RunFailed("fit", "exited without finishing (interrupted?)", [])
    stages = [s for s in EVAL_STAGES if getattr(job, s) and f"metrics_{s}" not in results]
    if stages:
        ckpt = choose_checkpoint(results["fit"], job.checkpoint)
        for stage in stages:
            _phase(job, status, stage, ckpt)


def choose_checkpoint(fit: dict[str, Any], which: str) -> str:
    """The best checkpoint (when asked for and saved) or the last one.

    Raises:
        RunFailed: the fit saved no checkpoint to evaluate.
    """
    candidates = [fit.get("best"), fit.get("last")] if which == "best" else [fit.get("last")]
    for path in candidates:
        if path and Path(path).exists():
            return path
    raise RunFailed("evaluation", "the fit saved no checkpoint: add ModelCheckpoint(save_last=true)", [])


def _phase(job: RunJob, status: dict[str, Any], phase: str, ckpt_path: str | None) -> None:
    status["phase"] = phase
    write_status(job.run_dir, status)
    cmd = job.command(phase, ckpt_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **job.env}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with open(job.run_dir / LOG_FILE, "a", buffering=1) as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        write_status(job.run_dir, {**status, "child_pid": proc.pid})
        try:
            for line in proc.stderr:
                log.write(line)
                tail.append(line.rstrip("\n"))
            code = proc.wait()
        except BaseException:  # the runner itself is stopped: never leave the phase running unattended
            _stop(proc)
            raise
    if -code in STOP_SIGNALS or any(marker in line for line in tail for marker in INTERRUPTED):
        raise RunInterrupted(phase)
    if code != 0:
        raise RunFailed(phase, summarize_error(list(tail), code), list(tail))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (Lightning stops gracefully), then SIGKILL after a grace period."""
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize_error(tail: list[str], code: int) -> str:
    """One line for the table: the last ``...Error: msg`` line of stderr (a jsonargparse ``error:`` with
    the lines after it), or its last line, and the exit status."""
    exit_ = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    lines = [line.strip() for line in tail if line.strip()]
    starts = [i for i, line in enumerate(lines) if _ERROR_LINE.match(line)]
    if starts:
        first = lines[starts[-1]]
        text = " ".join(lines[starts[-1] :]) if first.startswith("error:") else first
    elif lines:
        text = lines[-1]
    else:
        return exit_
    return f"{text[:MAX_ERROR_CHARS]} ({exit_})"


def headline_metrics(status: dict[str, Any]) -> dict[str, float]:
    """The metrics a table shows: those of ``validate`` (else the last validation of fit), plus ``test``."""
    metrics = status.get("metrics") or {}
    return {**(metrics.get("validate") or metrics.get("fit") or {}), **(metrics.get("test") or {})}


def log_hparams(job: RunJob, status: dict[str, Any]) -> None:
    """Write the overrides and headline metrics to ``<run_dir>/hparams`` (TensorBoard's HParams view)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    metrics = headline_metrics(status)
    if not metrics:
        return
    params = {key: format_value(value) for key, value in job.overrides.items()}
    logger = TensorBoardLogger(save_dir=str(job.run_dir), name="", version="hparams", default_hp_metric=False)
    logger.log_hyperparams({"run": job.name, **params}, metrics)
    logger.finalize("success")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
