"""LoRA adapters (``peft``) on the parts of a model: add them, list them, merge them away.

peft's ``inject_adapter_in_model`` wraps each targeted ``nn.Linear`` in place (no ``PeftModel``
around our model), so the parts keep their names and attributes. A wrapped layer keeps its weights
under ``<layer>.base_layer.*`` and its adapter under ``<layer>.lora_A.default.*`` /
``<layer>.lora_B.default.*`` (the keys a Lightning checkpoint with adapters holds). `merge_adapters`
folds ``alpha / rank * B @ A`` into each base weight and puts the plain ``nn.Linear`` back, so a
merged part's state dict is the one of a part that never had adapters (what `evf export` writes).

peft is an optional dependency (``pip install 'evf[lora]'``), imported only when adapters are added
or merged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

ADAPTER_MARK = "lora_"
"""peft names every LoRA tensor ``lora_*`` (``lora_A``, ``lora_B``, ...); nothing else has it."""
ADAPTER_NAME = "default"


@dataclass
class LoraConfig:
    """Low-rank adapters: ``W x + alpha / rank * B A dropout(x)`` on the chosen linear layers, with
    ``B`` starting at zero (an adapted model starts as exactly the base model).

    Attributes:
        rank: inner width of each adapter.
        alpha: scale numerator: the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input (training only).
        encoder_targets: the multimodal encoder's ``nn.Linear`` layers to adapt, each a dotted
            fragment of the layer's module name: ``attn.q`` matches BEIT-3's ``blocks.<i>.attn.q.vision``
            and ``blocks.<i>.attn.q.text`` (the default: BEIT-3's attention projections q, k, v, out in
            both modalities; ``attn.q.vision`` adapts the vision copy only). Empty: no encoder adapters.
        decoder_targets: likewise in SAM's mask decoder, e.g. ``q_proj``, ``k_proj``, ``v_proj``,
            ``out_proj`` (the attention layers of its two-way transformer). Empty: no decoder adapters.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    encoder_targets: tuple[str, ...] = ("attn.q", "attn.k", "attn.v", "attn.out")
    decoder_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.encoder_targets = tuple(self.encoder_targets)
        self.decoder_targets = tuple(self.decoder_targets)
        if self.rank < 1:
            raise ValueError(f"lora.rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.encoder_targets and not self.decoder_targets:
            raise ValueError("lora has no targets: set lora.encoder_targets and/or lora.decoder_targets")


def matching_linears(module: nn.Module, targets: tuple[str, ...], part: str) -> list[str]:
    """Names of the ``nn.Linear`` layers of ``module`` that some target matches (a target matches
    a name containing it as whole dotted components).

    Raises:
        ValueError: a target matches no linear layer (names the part and a few of its layers).
    """
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    found: list[str] = []
    for target in targets:
        pattern = re.compile(rf"(^|\.){re.escape(target)}(\.|$)")
        hits = [name for name in linears if pattern.search(name)]
        if not hits:
            examples = ", ".join(linears[:8]) or "none"
            raise ValueError(
                f"lora target {target!r} matches no nn.Linear of the {part} (its linear layers: "
                f"{examples}, ...)"
            )
        found += [name for name in hits if name not in found]
    return found


def _peft():
    try:
        import peft
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("LoRA needs the peft package: pip install 'evf[lora]'") from err
    return peft


def add_adapters(module: nn.Module, config: LoraConfig, targets: tuple[str, ...], part: str) -> list[str]:
    """Wrap the linear layers of ``module`` that ``targets`` name with LoRA adapters, in place.

    Returns:
        The adapted layers' names.

    Raises:
        ValueError: ``module`` already has adapters, or a target matches nothing.
    """
    if has_adapters(module):
        raise ValueError(f"the {part} already has LoRA adapters")
    names = matching_linears(module, targets, part)
    peft = _peft()
    peft_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=names,  # full names: peft matches them exactly
        bias="none",
    )
    peft.inject_adapter_in_model(peft_config, module, adapter_name=ADAPTER_NAME)
    # peft leaves its config on the module for a later PeftModel; ours is `LoraConfig`, in hparams.
    del module.peft_config
    return names


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter tensors of ``module`` (empty without adapters)."""
    return [p for name, p in module.named_parameters() if ADAPTER_MARK in name]


def has_adapters(module: nn.Module) -> bool:
    return any(ADAPTER_MARK in name for name, _ in module.named_parameters())


def merge_adapters(module: nn.Module) -> int:
    """Fold every adapter of ``module`` into its base weight and unwrap the layer back to its plain
    ``nn.Linear``, in place.

    Returns:
        The number of layers merged.

    Raises:
        ValueError: a merged weight is not finite (peft's ``safe_merge``).
    """
    if not has_adapters(module):
        return 0
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, m) for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in wrapped:
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name), child, layer.get_base_layer())
    return len(wrapped)


__all__ = [
    "LoraConfig",
    "adapter_parameters",
    "add_adapters",
    "has_adapters",
    "matching_linears",
    "merge_adapters",
]
