"""Where the runs of a sweep execute.

* `LocalLauncher`: one after the other in this process's machine.
* `ParallelLauncher`: one run per device at a time. On GPUs each worker pins its runs to one GPU
  through ``CUDA_VISIBLE_DEVICES``; on CPU, "devices" are N concurrent runs sharing the cores
  (``OMP_NUM_THREADS`` split between them).
* `SlurmLauncher`: one SLURM job array through submitit, one array task per run, resources from the
  grid file's ``resources``. A task requeues itself on timeout/preemption and resumes from
  ``last.ckpt``.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from evf.sweep.runner import RunJob, execute

# Grid ``resources`` keys that submitit's AutoExecutor knows without a ``slurm_`` prefix.
GENERIC_RESOURCES = (
    "timeout_min",
    "mem_gb",
    "nodes",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "stderr_to_stdout",
    "name",
)


class LocalLauncher:
    """Run the jobs sequentially here."""

    def launch(self, jobs: list[RunJob]) -> list[dict[str, Any]]:
        return [execute(job) for job in jobs]


class ParallelLauncher:
    """Run the jobs here, ``devices`` at a time, one device each.

    Args:
        devices: number of concurrent runs. None: every visible GPU, or 1 on a machine without GPUs.
    """

    def __init__(self, devices: int | None = None) -> None:
        self.devices = devices

    def worker_envs(self) -> list[dict[str, str]]:
        """The environment of each worker: its GPU, or its share of the CPU threads."""
        gpus = _visible_gpus()
        if gpus:
            count = self.devices or len(gpus)
            if count > len(gpus):
                raise ValueError(f"{count} parallel runs asked for, but only {len(gpus)} GPU(s) are visible")
            return [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in gpus[:count]]
        count = self.devices or 1
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // count))
        return [{"OMP_NUM_THREADS": threads} for _ in range(count)]

    def launch(self, jobs: list[RunJob]) -> list[dict[str, Any]]:
        todo: queue.Queue[tuple[int, RunJob]] = queue.Queue()
        for item in enumerate(jobs):
            todo.put(item)
        results: list[dict[str, Any] | None] = [None] * len(jobs)

        def work(env: dict[str, str]) -> None:
            while True:
                try:
                    index, job = todo.get_nowait()
                except queue.Empty:
                    return
                results[index] = execute(replace(job, env={**job.env, **env}))

        workers = [threading.Thread(target=work, args=(env,), daemon=True) for env in self.worker_envs()]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return [r for r in results if r is not None]


def _visible_gpus() -> list[str]:
    """Ids to put in ``CUDA_VISIBLE_DEVICES``, honouring an existing restriction."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


class SlurmTask:
    """What one array task calls: run the job; on timeout/preemption, submitit requeues the same job."""

    def __call__(self, job: RunJob) -> dict[str, Any]:
        return execute(job)

    def checkpoint(self, job: RunJob) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


class SlurmLauncher:
    """Submit the jobs as one SLURM job array (submitit), one run per task on one node.

    Each run's subprocesses see ``SLURM_JOB_NAME=interactive``, so Lightning starts the DDP processes
    over the node's ``gpus_per_node`` GPUs itself (set ``trainer.devices`` to match) instead of
    expecting one SLURM task per GPU.

    Args:
        folder: where submitit writes its scripts, pickles and logs.
        resources: the grid's ``resources``: ``partition``, ``gpus_per_node``, ``cpus_per_task``,
            ``timeout_min``, ``mem_gb``, ``array_parallelism``, ``account``, ``qos``, ``constraint``...
            Keys other than submitit's generic ones get a ``slurm_`` prefix.
        name: the SLURM job name.
        cluster: submitit cluster (``slurm``; ``debug`` runs the tasks in this process).
    """

    def __init__(
        self, folder: Path, resources: dict[str, Any], name: str = "evf-sweep", cluster: str = "slurm"
    ) -> None:
        if int(resources.get("nodes", 1)) != 1 or int(resources.get("tasks_per_node", 1)) != 1:
            raise ValueError(
                "the SLURM launcher runs one task on one node per run: set nodes and tasks_per_node to 1"
            )
        self.folder = Path(folder)
        self.resources = resources
        self.name = name
        self.cluster = cluster

    def parameters(self) -> dict[str, Any]:
        """The grid's resources as `submitit.AutoExecutor.update_parameters` arguments."""
        params: dict[str, Any] = {"name": self.name}
        for key, value in self.resources.items():
            params[key if key in GENERIC_RESOURCES or key.startswith("slurm_") else f"slurm_{key}"] = value
        return params

    def executor(self) -> Any:
        """A configured `submitit.AutoExecutor`."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        executor.update_parameters(**self.parameters())
        return executor

    def launch(self, jobs: list[RunJob]) -> list[Any]:
        """Submit; returns the submitit jobs (``job.job_id``, ``job.result()``)."""
        jobs = [replace(job, env={**job.env, "SLURM_JOB_NAME": "interactive"}) for job in jobs]
        return self.executor().map_array(SlurmTask(), jobs)
