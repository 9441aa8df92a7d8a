"""What a Lightning checkpoint of `EVFSAMModule` must agree on with the module it loads into: the
optional parts whose presence the hyperparameters decide (the presence head, LoRA adapters). A
mismatch is a `CheckpointError` naming the setting, not a wall of missing / unexpected keys."""

from __future__ import annotations

from typing import Any

from evf.checkpoint import CheckpointError
from evf.lora import ADAPTER_MARK
from evf.model import EVFSAM


def check_adapters(model: EVFSAM, state_dict: dict[str, Any]) -> None:
    """CheckpointError unless a Lightning checkpoint's weights have LoRA adapters exactly when
    ``model`` has them."""
    has_adapters = any(ADAPTER_MARK in key for key in state_dict)
    if has_adapters and model.lora is None:
        raise CheckpointError(
            f"the checkpoint has LoRA adapters (*.{ADAPTER_MARK}*) but the model is built with "
            "model.lora: null; set model.lora as in the run that wrote it"
        )
    if not has_adapters and model.lora is not None:
        raise CheckpointError(
            "the checkpoint has no LoRA adapters but the model is built with model.lora; drop model.lora, "
            "or `evf export` the checkpoint and start the LoRA run from it with model.init_from"
        )


PRESENCE_KEYS = "model.presence_head."


def check_presence_head(model: EVFSAM, state_dict: dict[str, Any]) -> None:
    """CheckpointError unless a Lightning checkpoint's weights have a presence head exactly when
    ``model`` has one."""
    has_head = any(key.startswith(PRESENCE_KEYS) for key in state_dict)
    if has_head != model.has_presence:
        found = "has a presence head" if has_head else "has no presence head"
        raise CheckpointError(
            f"the checkpoint {found} ({PRESENCE_KEYS}*) but the model is built with model.presence: "
            f"{str(model.has_presence).lower()}; set model.presence to match the checkpoint"
        )


__all__ = ["PRESENCE_KEYS", "check_adapters", "check_presence_head"]
