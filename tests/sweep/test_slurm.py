"""The SLURM launcher, without a cluster: real submitit, fake ``srun``/``sbatch`` on PATH; we read the
job array script and the pickled task of each run that submitit would hand to SLURM."""

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import yaml

from evf.cli import main
from evf.sweep.launchers import SlurmLauncher, SlurmTask
from evf.sweep.runner import read_status

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs/quickstart.yaml"


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``srun`` that does nothing and ``sbatch`` that keeps the script and answers with job 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "sbatch_script.sh"
    scripts = {"srun": "exit 0", "sbatch": f'cp "$1" {captured}\necho "Submitted batch job 4242"'}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return captured


def test_sweep_submits_one_job_array_with_the_grid_resources(tmp_path, fake_slurm, capsys):
    grid = tmp_path / "fusion.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "fusion",
        "rows": [{"name": n, "model.encoder_kwargs": {"fusion": n}} for n in ("text", "late", "early")],
        "resources": {"partition": "gpu", "gpus_per_node": 4, "cpus_per_task": 16, "mem_gb": 64,
                      "timeout_min": 120, "array_parallelism": 2, "account": "lab"},
    }))  # fmt: skip
    out = tmp_path / "sweep"
    main(["sweep", "--grid", str(grid), "--base", str(BASE), "--out", str(out), "--launcher", "slurm"])

    assert "4242_0 4242_1 4242_2" in capsys.readouterr().out
    script = fake_slurm.read_text()
    expected = [
        "--array=0-2%2", "--partition=gpu", "--gpus-per-node=4", "--cpus-per-task=16", "--mem=64GB",
        "--time=120", "--nodes=1", "--account=lab", "--job-name=evf-sweep-fusion",
    ]  # fmt: skip
    for line in expected:
        assert f"#SBATCH {line}\n" in script, line

    for index, name in enumerate(("text", "late", "early")):
        submission = pickle.loads((out / "slurm" / f"4242_{index}_submitted.pkl").read_bytes())
        assert isinstance(submission.function, SlurmTask)
        (job,) = submission.args
        assert job.name == name and job.run_dir == (out / name).resolve()
        assert job.env["SLURM_JOB_NAME"] == "interactive"  # Lightning launches DDP over the node's GPUs
        command = job.command("fit")
        assert command[1:6] == ["-m", "evf.cli", "fit", "--config", str(BASE)]
        assert f'--model.encoder_kwargs={{"fusion":"{name}"}}' in command
        assert read_status(out / name)["status"] == "pending"  # listed in the table until the task runs
    assert json.loads((out / "sweep.json").read_text())["runs"] == ["text", "late", "early"]


def test_resources_map_to_submitit_parameters():
    launcher = SlurmLauncher(
        Path("x"), {"partition": "gpu", "timeout_min": 60, "slurm_qos": "high", "constraint": "a100"}
    )
    assert launcher.parameters() == {
        "name": "evf-sweep",
        "slurm_partition": "gpu",
        "timeout_min": 60,
        "slurm_qos": "high",
        "slurm_constraint": "a100",
    }


@pytest.mark.parametrize("resources", [{"nodes": 2}, {"tasks_per_node": 4}])
def test_multi_task_runs_are_refused(resources):
    with pytest.raises(ValueError, match="one task on one node"):
        SlurmLauncher(Path("x"), resources)
