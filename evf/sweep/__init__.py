"""Sweeps: a grid of encoders x backends x modes -> one LightningCLI run each -> the paper's tables.

* `grid`: the grid file schema and its expansion into named runs with override flags.
* `runner`: one run = ``evf fit`` then ``evf validate`` / ``evf test`` in subprocesses, with a
  status file; resumable.
* `callbacks`: what every run adds to its trainer (fail on a non-finite loss, record results).
* `launchers`: local (sequential), parallel (one run per device), SLURM (submitit job array).
* `report`: the Markdown/CSV table, optionally beside the paper's numbers (``paper_tables.yaml``).
* `commands`: the ``evf sweep`` and ``evf sweep-report`` tools.

See docs/sweeps.md.
"""

from evf.sweep.grid import Grid, Run, override_flags
from evf.sweep.report import write_report
from evf.sweep.runner import RunJob, execute, read_status

__all__ = ["Grid", "Run", "RunJob", "execute", "override_flags", "read_status", "write_report"]
