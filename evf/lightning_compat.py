"""The one place EVF reaches into Lightning beyond its public API.

Each function names what it reads and why no public API serves; tests/test_lightning_compat.py runs
them against the installed Lightning, so an upgrade that moves something fails there first.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI


def training_batches_done(trainer: L.Trainer) -> int:
    """Training batches of the current epoch ``trainer`` has processed (restored on resume).

    A batch counts once its ``training_step`` has run, so in ``on_train_batch_end`` of batch ``i``
    this is ``i + 1``. Lightning has no public counter for it: ``trainer.global_step`` counts
    optimizer steps over all epochs (not batches once gradients accumulate), so this reads the fit
    loop's progress tracker, which is internal (``_TrainingEpochLoop.batch_progress``).
    """
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The `Trainer` ``module`` is attached to, or None (also under Fabric, which has no Trainer).

    Public API only: ``LightningModule.trainer`` raises RuntimeError when no trainer is attached.
    """
    try:
        trainer = module.trainer
    except RuntimeError:
        return None
    return trainer if isinstance(trainer, L.Trainer) else None


class SubcommandArgumentsCLI(LightningCLI):
    """A `LightningCLI` whose subclasses add arguments to one subcommand: `add_subcommand_arguments`.

    ``add_arguments_to_parser`` (public) is called for every subcommand without saying which, so
    this overrides ``_prepare_subcommand_parser`` (private), which builds each subcommand's parser.
    """

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        self.add_subcommand_arguments(parser, subcommand)
        return parser

    def add_subcommand_arguments(self, parser: LightningArgumentParser, subcommand: str) -> None:
        """Add arguments to the parser of ``subcommand`` (``fit``, ``predict``, ...)."""
