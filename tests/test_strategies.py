"""The strategy configs of configs/strategies/: parsed by the real CLI, and a 2-process DDP fit.

FSDP and DeepSpeed need GPUs (Lightning refuses both on a CPU accelerator, DeepSpeed is an optional
dependency), so here their strategy objects are built from the parsed config without a Trainer,
and their settings are checked against our model's block classes.
"""

from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

import evf
from evf.cli import EVFCLI

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ROOT / "configs" / "strategies"
TINY_FIT = [
    "--config", str(ROOT / "configs/quickstart.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=2",
    "--trainer.max_steps=2", "--trainer.accumulate_grad_batches=2", "--trainer.limit_val_batches=1",
    "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--data.init_args.num_train=8", "--data.init_args.num_val=2", "--data.init_args.batch_size=2",
    "--data.init_args.eval_batch_size=2", "--data.init_args.num_workers=0",
    "--data.init_args.embedding_cache=null",  # a clean clone has no quickstart cache
]  # fmt: skip


class _StrategyOnly(EVFCLI):
    """Parses like ``evf fit`` and instantiates the trainer's arguments, but builds no Trainer."""

    def instantiate_classes(self) -> None:
        config = self.config.clone()
        config.pop("model")
        self.trainer_config = self.parser.instantiate(config).trainer


def _strategy(name: str):
    args = ["--config", str(ROOT / "configs/evf_sam_h_beit3_l.yaml"), "--config", str(STRATEGIES / name)]
    with torch.device("meta"):
        return _StrategyOnly(args=[*args, "--trainer.accelerator=cpu"], run=False).trainer_config.strategy


def test_every_strategy_config_is_tested_here():
    assert {p.name for p in STRATEGIES.glob("*.yaml")} == {"ddp.yaml", "fsdp.yaml", "deepspeed_stage_2.yaml"}


def test_ddp_config():
    strategy = _strategy("ddp.yaml")
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is True
    assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True


def test_fsdp_config_wraps_every_block_and_keeps_frozen_parameters():
    strategy = _strategy("fsdp.yaml")
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"] is True
    wrapped = tuple(strategy.kwargs["auto_wrap_policy"]._module_classes)
    encoder = evf.create_encoder("beit3_tiny")
    assert all(isinstance(b, wrapped) for b in encoder.blocks)
    for name in ("sam_tiny", "sam2_tiny", "efficient_sam_tiny"):
        image_encoder = evf.create_backend(name).image_encoder
        lists = [m for n, m in image_encoder.named_modules() if n.endswith("blocks")]
        assert lists and all(isinstance(b, wrapped) for blocks in lists for b in blocks), name


def test_deepspeed_config_parses_and_needs_deepspeed():
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="DeepSpeed installed"):
            _strategy("deepspeed_stage_2.yaml")
        with pytest.raises(MisconfigurationException):
            from lightning.pytorch.strategies import DeepSpeedStrategy

            DeepSpeedStrategy(stage=2)
        return
    strategy = _strategy("deepspeed_stage_2.yaml")
    assert strategy.config["zero_optimization"]["stage"] == 2


@pytest.mark.slow
def test_two_process_ddp_fit_with_the_ddp_config():
    """2 CPU processes (gloo), tiny models, gradient accumulation: 2 optimizer steps."""
    ddp = ["--config", str(STRATEGIES / "ddp.yaml"), "--trainer.strategy.init_args.start_method=spawn"]
    cli = EVFCLI(args=["fit", *TINY_FIT, *ddp])
    assert cli.trainer.world_size == 2 and cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
