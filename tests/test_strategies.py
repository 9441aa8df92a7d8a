"""The strategy configs of configs/strategies/: parsed by the real CLI, and a 2-process DDP fit.

FSDP and DeepSpeed need GPUs (Lightning refuses both on a CPU accelerator, DeepSpeed is an optional
dependency), so here their strategy objects are built from the parsed config without a Trainer,
and their settings are checked against our model's block classes.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

import evf
from evf.cli import EVFCLI
from evf.module import EVFSAMModule

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


def test_fsdp_clips_gradients_by_norm_through_the_fsdp_root():
    """The paper configs clip by norm (1.0); Lightning's FSDP precision plugin refuses that, so the
    module asks the FSDP-wrapped root module, which computes the norm over every rank's shards."""
    with pytest.raises(MisconfigurationException, match="not supported for `FSDPPrecision`"):
        FSDPPrecision("bf16-mixed").clip_grad_by_norm(None, 1.0)

    class Root(torch.nn.Module):  # stands in for FullyShardedDataParallel (GPU only)
        def __init__(self) -> None:
            super().__init__()
            self.clipped: list[float] = []

        def clip_grad_norm_(self, max_norm: float) -> None:
            self.clipped.append(max_norm)

    module = EVFSAMModule(encoder="beit3_tiny", backend="sam_tiny")
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    strategy = FSDPStrategy()
    strategy.model = Root()
    module.trainer = SimpleNamespace(strategy=strategy)
    module.clip_gradients(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert strategy.model.clipped == [1.0]

    module.trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)  # not FSDP
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.ones_like(p)
    module.clip_gradients(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(
        1.0, rel=1e-3
    )


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
