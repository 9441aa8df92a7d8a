"""`evf sweep` end to end on the shapes data with tiny models (slow), and the runner's resume,
retry and error bookkeeping with a stand-in for the subprocess (fast)."""

import csv
import json
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from evf.cli import main
from evf.sweep import launchers, runner
from evf.sweep.grid import Grid
from evf.sweep.launchers import ParallelLauncher
from evf.sweep.report import write_report
from evf.sweep.runner import RunJob, read_status, should_run, summarize_error, write_status

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs/quickstart.yaml"
TINY = {
    "trainer.accelerator": "cpu", "trainer.max_steps": 2, "trainer.limit_val_batches": 1,
    "trainer.log_every_n_steps": 1, "data.init_args.num_train": 4, "data.init_args.num_val": 2,
    "data.init_args.num_test": 2, "data.init_args.batch_size": 2, "data.init_args.eval_batch_size": 2,
    "data.init_args.num_workers": 0, "data.init_args.embedding_cache": None,  # no cache in a clean clone
}  # fmt: skip


def _sweep(tmp_path: Path, grid: dict, *flags: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base_overrides": TINY, **grid}, sort_keys=False))
    out = tmp_path / "sweep"
    main(["sweep", "--grid", str(path), "--base", str(BASE), "--out", str(out), *flags])
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


class _NoSubprocess:
    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError(f"a subprocess was launched: {args[0]}")


@pytest.mark.slow
def test_two_by_two_grid_runs_then_a_rerun_skips_every_run(tmp_path, monkeypatch, capsys):
    fusions = [{"fusion": "early", "feature": "cls_image"}, {"fusion": "late", "feature": "concat"}]
    grid = {
        "name": "fusion",
        "axes": {"model.encoder_kwargs": fusions, "seed_everything": [0, 1]},
        "validate": False,
    }
    out = _sweep(tmp_path, grid)

    names = [
        "encoder_kwargs=fusion=early+feature=cls_image,seed=0",
        "encoder_kwargs=fusion=early+feature=cls_image,seed=1",
        "encoder_kwargs=fusion=late+feature=concat,seed=0",
        "encoder_kwargs=fusion=late+feature=concat,seed=1",
    ]
    rows = _csv(out / "report.csv")
    assert [r["run"] for r in rows] == names
    metric_columns = ["shapes/val cIoU", "shapes/val gIoU", "AVG"]
    assert list(rows[0]) == [
        "run",
        *metric_columns,
        "params (M)",
        "trainable (M)",
        "wall time",
        "status",
        "error",
    ]
    for row in rows:
        assert row["status"] == "done" and row["error"] == ""
        assert 0.0 <= float(row["shapes/val cIoU"]) <= 100.0 and float(row["AVG"]) == float(
            row["shapes/val cIoU"]
        )
        assert 0 < float(row["trainable (M)"]) < float(row["params (M)"])  # SAM's image encoder is frozen
    assert float(rows[2]["params (M)"]) != float(rows[0]["params (M)"])  # late fusion builds other parts
    grouped = _csv(out / "report_grouped.csv")
    assert [(g["config"], g["runs"]) for g in grouped] == [(n.rsplit(",", 1)[0], "2/2") for n in names[::2]]
    assert "## Mean ± std over seeds" in (out / "report.md").read_text()

    run_dir = out / names[0]
    for name in ("config.yaml", "log.txt", "status.json", "checkpoints/last.ckpt"):
        assert (run_dir / name).exists(), name
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["encoder_kwargs"] == fusions[0] and saved["seed_everything"] == 0
    assert list((run_dir / "hparams").glob("events.out.tfevents.*")), "no HParams summary for TensorBoard"
    status = read_status(run_dir)
    assert status["wall_time_s"] > 0 and status["attempts"] == 1 and status["params"]["total"] > 0

    capsys.readouterr()
    monkeypatch.setattr(runner.subprocess, "Popen", _NoSubprocess)
    _sweep(tmp_path, grid)
    printed = capsys.readouterr().out
    assert [line.split() for line in printed.splitlines()[: len(names)]] == [[n, "done"] for n in names]
    assert read_status(run_dir)["attempts"] == 1


@pytest.mark.slow
def test_broken_runs_are_marked_failed_and_the_others_finish(tmp_path):
    grid = {
        "name": "broken",
        "rows": [
            {"name": "good"},
            {"name": "unknown_encoder", "model.encoder": "beit3_nope"},
            {"name": "infinite_loss", "model.loss.bce": 1.0e39},  # float32 overflow: a non-finite loss
        ],
        "test": True,
    }
    out = _sweep(tmp_path, grid)

    rows = {r["run"]: r for r in _csv(out / "report.csv")}
    assert [r["status"] for r in rows.values()] == ["done", "failed", "failed"]
    assert "Unknown encoder 'beit3_nope'" in rows["unknown_encoder"]["error"]
    assert "FloatingPointError: non-finite training loss" in rows["infinite_loss"]["error"]
    assert rows["good"]["shapes/val cIoU"] and rows["good"]["test shapes/test cIoU"]  # validate and test ran
    metrics = read_status(out / "good")["metrics"]
    assert set(metrics) == {"fit", "validate", "test"}
    assert read_status(out / "infinite_loss")["error_tail"], "the stderr tail is kept in status.json"
    assert "| unknown_encoder |" in (out / "report.md").read_text()


def _job(tmp_path: Path) -> RunJob:
    return RunJob(name="r", run_dir=tmp_path / "r", base=BASE, overrides={"seed_everything": 0})


class _FakeRun:
    """Stands in for ``subprocess.Popen``: records the command and device, writes what the run would
    (``last.ckpt`` and the `RecordResults` entries)."""

    commands: list[list[str]] = []
    devices: list[str | None] = []

    def __init__(self, cmd, stdout, stderr, text, env) -> None:
        _FakeRun.commands.append(cmd)
        _FakeRun.devices.append(env.get("CUDA_VISIBLE_DEVICES"))
        results_path = Path(next(a for a in cmd if "results.json" in a).split('"path": "')[1].split('"')[0])
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        if cmd[3] == "fit":
            last = results_path.parent / "checkpoints" / "last.ckpt"
            last.parent.mkdir(exist_ok=True)
            last.touch()
            results["fit"] = {"best": None, "last": str(last)}
        else:
            results[f"metrics_{cmd[3]}"] = {
                "values": {"val/shapes/val/ciou": 0.5, "val/shapes/val/giou": 0.4}
            }
        results_path.write_text(json.dumps(results))
        self.pid = 2**22 + 3  # above Linux's pid_max: no live process has it
        self.stderr = iter(["a warning\n"])

    def wait(self) -> int:
        return 0


def test_an_interrupted_run_resumes_from_last_ckpt(tmp_path, monkeypatch):
    job = _job(tmp_path)
    (job.run_dir / "checkpoints").mkdir(parents=True)
    (job.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    write_status(
        job.run_dir,
        {"status": "running", "host": "another-node", "pid": 1, "attempts": 1, "wall_time_s": 5.0},
    )
    assert should_run(job.run_dir) == (True, "resume")
    _FakeRun.commands = []
    monkeypatch.setattr(runner.subprocess, "Popen", _FakeRun)

    status = runner.execute(job)

    fit, validate = _FakeRun.commands
    assert fit[3] == "fit" and fit[-1] == f"--ckpt_path={job.run_dir / 'checkpoints' / 'last.ckpt'}"
    assert (
        validate[3] == "validate"
        and validate[-1] == f"--ckpt_path={job.run_dir / 'checkpoints' / 'last.ckpt'}"
    )
    assert status["status"] == "done" and status["attempts"] == 2 and status["wall_time_s"] > 5.0
    assert status["metrics"]["validate"]["val/shapes/val/ciou"] == 0.5
    assert "a warning" in (job.run_dir / "log.txt").read_text()


class _Interrupted:
    """A fit that Lightning stopped on SIGINT: exit 1 after its graceful-shutdown message."""

    def __init__(self, *args, **kwargs) -> None:
        self.pid = 2**22 + 3
        self.stderr = iter(["Detected KeyboardInterrupt, attempting graceful shutdown ...\n"])

    def wait(self) -> int:
        return 1


def test_an_interruption_is_not_a_failure(tmp_path, monkeypatch):
    job = _job(tmp_path)
    monkeypatch.setattr(runner.subprocess, "Popen", _Interrupted)
    status = runner.execute(job)
    assert status["status"] == "running" and "interrupted during fit" in status["error"]
    assert should_run(job.run_dir) == (True, "resume")


def test_a_run_whose_phase_process_is_alive_is_not_started_twice(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        status = {
            "status": "running",
            "host": socket.gethostname(),
            "pid": 2**22 + 1,
            "child_pid": sleeper.pid,
        }
        write_status(tmp_path, status)
        assert should_run(tmp_path) == (False, "running (its process is alive)")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert should_run(tmp_path) == (True, "resume")


class _RunnerStopped:
    """A phase during which the runner itself gets Ctrl-C: the phase process must be stopped too."""

    terminated = False

    def __init__(self, *args, **kwargs) -> None:
        self.pid = 2**22 + 2
        self.stderr = self._lines()

    def _lines(self):
        yield "step 1\n"
        raise KeyboardInterrupt

    def terminate(self) -> None:
        _RunnerStopped.terminated = True

    def wait(self, timeout=None) -> int:
        return -15


def test_stopping_the_runner_stops_the_phase_and_leaves_the_run_resumable(tmp_path, monkeypatch):
    job = _job(tmp_path)
    monkeypatch.setattr(runner.subprocess, "Popen", _RunnerStopped)
    with pytest.raises(KeyboardInterrupt):
        runner.execute(job)
    assert _RunnerStopped.terminated
    assert read_status(job.run_dir)["status"] == "running"


def test_a_finished_fit_is_not_repeated(tmp_path, monkeypatch):
    job = _job(tmp_path)
    (job.run_dir / "checkpoints").mkdir(parents=True)
    last = job.run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    (job.run_dir / "results.json").write_text(json.dumps({"fit": {"best": None, "last": str(last)}}))
    _FakeRun.commands = []
    monkeypatch.setattr(runner.subprocess, "Popen", _FakeRun)
    runner.execute(job)
    assert [c[3] for c in _FakeRun.commands] == ["validate"]


def test_parallel_launcher_gives_each_worker_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(launchers, "_visible_gpus", lambda: ["2", "5"])
    assert ParallelLauncher().worker_envs() == [{"CUDA_VISIBLE_DEVICES": "2"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    with pytest.raises(ValueError, match="only 2 GPU"):
        ParallelLauncher(devices=3).worker_envs()
    _FakeRun.commands, _FakeRun.devices = [], []
    monkeypatch.setattr(runner.subprocess, "Popen", _FakeRun)
    jobs = [RunJob(name=f"r{i}", run_dir=tmp_path / f"r{i}", base=BASE, overrides={}) for i in range(5)]

    statuses = ParallelLauncher().launch(jobs)

    assert [s["name"] for s in statuses] == [f"r{i}" for i in range(5)]
    assert all(s["status"] == "done" for s in statuses)
    assert set(_FakeRun.devices) == {"2", "5"} and len(_FakeRun.devices) == 10  # fit + validate per run


def test_parallel_launcher_on_cpu_splits_the_threads(monkeypatch):
    monkeypatch.setattr(launchers, "_visible_gpus", lambda: [])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launchers.os, "cpu_count", lambda: 8)
    assert ParallelLauncher(devices=2).worker_envs() == [{"OMP_NUM_THREADS": "4"}] * 2


def test_dry_run_prints_the_selected_runs_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner.subprocess, "Popen", _NoSubprocess)
    grid = {"rows": [{"name": "text"}, {"name": "early"}], "axes": {"seed_everything": [0, 1]}}
    out = _sweep(tmp_path, grid, "--only", "*seed=1", "--dry_run", "true")
    printed = capsys.readouterr().out
    assert (
        printed.splitlines()[:2] == ["text,seed=1   start", "early,seed=1  start"] and "seed=0" not in printed
    )
    assert f"--trainer.default_root_dir={(out / 'early,seed=1').resolve()}" in printed
    assert not out.exists()


def test_a_grid_edited_after_its_runs_started_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.subprocess, "Popen", _NoSubprocess)
    grid = {"rows": [{"name": "text", "model.optim.lr": 0.001}]}
    out = tmp_path / "sweep"
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base_overrides": TINY, **grid}, sort_keys=False))
    job = RunJob.from_run(Grid.from_file(path).expand()[0], Grid.from_file(path), BASE, out)
    write_status(job.run_dir, {**runner._identity(job), "status": "done"})
    _sweep(tmp_path, grid)  # unchanged: skipped, no error

    grid["rows"][0]["model.optim.lr"] = 0.002
    with pytest.raises(ValueError, match=r"run\(s\) text were started with other overrides"):
        _sweep(tmp_path, grid)
    assert read_status(job.run_dir)["overrides"]["model.optim.lr"] == 0.001  # nothing overwritten


def test_failed_runs_are_retried_only_when_asked(tmp_path):
    write_status(tmp_path, {"status": "failed"})
    assert should_run(tmp_path) == (False, "failed (rerun with --retry_failed true)")
    assert should_run(tmp_path, retry_failed=True) == (True, "retry")
    write_status(tmp_path, {"status": "done"})
    assert should_run(tmp_path, retry_failed=True) == (False, "done")
    assert should_run(tmp_path / "new") == (True, "start")


def test_error_summary_is_the_exception_line_or_the_parser_error():
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1', "KeyError: 'beit3_nope'"]
    assert summarize_error(traceback, 1) == "KeyError: 'beit3_nope' (exit 1)"
    parser = [
        "usage: evf [-h]",
        'error: Parser key "model.loss":',
        "  Expected a <class 'float'>. Got value: x",
    ]
    assert (
        summarize_error(parser, 2)
        == "error: Parser key \"model.loss\": Expected a <class 'float'>. Got value: x (exit 2)"
    )
    assert summarize_error([], -9) == "killed by signal 9"


def test_report_groups_seeds_and_puts_paper_rows_beside(tmp_path):
    def status(name, state, ciou=None, **extra):
        metrics = (
            {"validate": {"val/refcoco/val/ciou": ciou, "val/refcoco/val/giou": ciou - 0.1}} if ciou else {}
        )
        group = name.split(",")[0]
        record = {"name": name, "group": group, "status": state, "metrics": metrics, "wall_time_s": 75.0}
        write_status(
            tmp_path / name, {**record, "params": {"total": 2_500_000, "trainable": 1_000_000}, **extra}
        )

    status("early,seed=0", "done", 0.8, paper_row="table3/beit3_l_early_all")
    status("early,seed=1", "done", 0.7, paper_row="table3/beit3_l_early_all")
    status("text,seed=0", "failed", error="fit: KeyError: 'x' (exit 1)")

    text = write_report(tmp_path, paper=True)

    assert "| early,seed=0 | 80.0 | 70.0 | 80.0 | missing | missing | 2.50 | 1.00 | 1m15s | done |  |" in text
    assert (
        "| text,seed=0 | – | – | – | – | – | 2.50 | 1.00 | 1m15s | failed | fit: KeyError: 'x' (exit 1) |"
        in text
    )
    assert "| early | 2/2 | 75.0 ± 7.1 | 65.0 ± 7.1 | 75.0 ± 7.1 | 2.50 | 1.00 |" in text
    assert "| text | 0/1 | – | – | – | 2.50 | 1.00 |" in text
