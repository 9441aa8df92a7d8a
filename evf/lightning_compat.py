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

    explicit_model_keys: tuple[str, ...] = ()
    """``model.*`` keys whose value given on the command line or in a config file wins over the one a
    ``--ckpt_path`` checkpoint stores (a one-line notice says so)."""

    def _parse_ckpt_path(self) -> None:
        """LightningCLI (private ``_parse_ckpt_path``) merges the hyperparameters of ``--ckpt_path``
        over the parsed config, so a stored value replaces what the user gave; this keeps the user's
        value of each of `explicit_model_keys` (a non-None value: their defaults are None)."""
        subcommand = self.config.get("subcommand")
        model = (self.config[subcommand].get("model") or {}) if subcommand else {}
        given = {k: model.get(k) for k in self.explicit_model_keys if model.get(k) is not None}
        super()._parse_ckpt_path()
        if not given:
            return
        model = self.config[subcommand]["model"]
        for key, value in given.items():
            stored = model.get(key)
            if stored != value:
                print(f"evf: model.{key}: using {value} (given), not {stored} (stored in the checkpoint)")
                model[key] = value
