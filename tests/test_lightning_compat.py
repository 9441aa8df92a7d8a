"""evf.lightning_compat against the installed Lightning: fails when an upgrade moves what it reads."""

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from evf.lightning_compat import SubcommandArgumentsCLI, attached_trainer, training_batches_done


class _Record(L.Callback):
    def __init__(self) -> None:
        self.done: list[tuple[int, int, int]] = []
        self.attached: list[L.Trainer | None] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.done.append((trainer.current_epoch, batch_idx, training_batches_done(trainer)))
        self.attached.append(attached_trainer(pl_module))


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )  # fmt: skip


def test_training_batches_done_counts_the_processed_batches_of_the_current_epoch():
    record = _Record()
    trainer = _trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[record])
    assert training_batches_done(trainer) == 0
    trainer.fit(BoringModel())
    assert record.done == [(epoch, i, i + 1) for epoch in range(2) for i in range(3)]


def test_attached_trainer_is_none_until_a_trainer_runs_the_module():
    module, record = BoringModel(), _Record()
    assert attached_trainer(module) is None
    trainer = _trainer(max_steps=2, limit_val_batches=0, callbacks=[record])
    trainer.fit(module)
    assert record.attached == [trainer, trainer]
    assert attached_trainer(module) is trainer
    module.trainer = None
    assert attached_trainer(module) is None


class _PredictFlagCLI(SubcommandArgumentsCLI):
    def add_subcommand_arguments(self, parser, subcommand: str) -> None:
        if subcommand == "predict":
            parser.add_argument("--only_for_predict", type=int, default=0)


def test_subcommand_arguments_reach_only_their_subcommand():
    trainer = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
               "--trainer.limit_predict_batches=1"]  # fmt: skip
    cli = _PredictFlagCLI(
        BoringModel, args=["predict", "--only_for_predict=3", *trainer], save_config_callback=None
    )
    assert cli.config["predict"]["only_for_predict"] == 3
    with pytest.raises(SystemExit):  # an unknown option to fit
        _PredictFlagCLI(
            BoringModel, args=["fit", "--only_for_predict=3", *trainer], save_config_callback=None
        )
