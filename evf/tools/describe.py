"""``evf describe``: the parameters of each part of the model a config builds, trainable and frozen.

The config goes through the real `EVFCLI` parser (the defaults, links and checks of ``evf fit``)
and the model is built on the ``meta`` device: nothing is allocated and no weights are read, so the
paper's full-size models can be described on a laptop::

    evf describe configs/evf_sam_h_beit3_l.yaml
    evf describe configs/evf_sam_h_beit3_l.yaml --experiment configs/ablations/table3/clip_l_openai_text.yaml

(The config file is a positional argument: jsonargparse's ``auto_cli``, which runs every tool,
reserves ``--config`` and drops a parameter of that name.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from evf.cli import EVFCLI
from evf.model import EVFSAM, trainable_summary
from evf.module import EVFSAMModule

PART_LABELS = {
    "encoder": "multimodal encoder",
    "projector": "projector",
    "image_encoder": "SAM image encoder",
    "prompt_encoder": "SAM prompt encoder",
    "mask_decoder": "SAM mask decoder",
}
"""Row label of each part of `EVFSAM.parts`."""


class _NoTrainerCLI(EVFCLI):
    """`EVFCLI` that parses and instantiates a config but builds no ``Trainer``: describing a model
    needs no accelerator, so a multi-GPU config can be described on a CPU-only machine."""

    def instantiate_trainer(self, **kwargs: object) -> None:
        return None


def load_module(configs: Sequence[str | Path]) -> EVFSAMModule:
    """The `EVFSAMModule` that ``evf fit --config C1 --config C2 ...`` would train, on the meta device."""
    args = [arg for config in configs for arg in ("--config", str(config))]
    with torch.device("meta"), warnings.catch_warnings():
        # `args` replaces `evf describe`'s own argv on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return _NoTrainerCLI(args=args, run=False).model


def parameter_table(model: EVFSAM) -> str:
    """A text table: one row per part, then the total; columns trainable, frozen, total."""
    rows = [(PART_LABELS[part], c["trainable"], c["frozen"]) for part, c in trainable_summary(model).items()]
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    lines = [f"{'part':<20}{'trainable':>16}{'frozen':>16}{'total':>16}{'':>9}"]
    for i, (label, trainable, frozen) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        total = trainable + frozen
        lines.append(f"{label:<20}{trainable:>16,}{frozen:>16,}{total:>16,}{_short(total):>9}")
    return "\n".join(lines)


def _short(count: int) -> str:
    """1_304_596_784 -> ``1.30B``, 662_194_176 -> ``662.2M``, 6_220 -> ``6.2K``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}" if unit == "B" else f"{count / scale:.1f}{unit}"
    return str(count)


def describe(base: Path, experiment: Path | None = None) -> None:
    """Print the parameter count of each part of the model a config builds (meta device, no weights read).

    Args:
        base: a training config, e.g. ``configs/evf_sam_h_beit3_l.yaml`` (positional: ``--config``
            here is jsonargparse's file of this tool's own options).
        experiment: a config merged over ``base``, as a second ``--config`` of ``evf fit``, e.g.
            ``configs/ablations/table3/clip_l_openai_text.yaml``.
    """
    module = load_module([base] if experiment is None else [base, experiment])
    hp = module.hparams
    options = ", ".join(f"{k}={v}" for k, v in (hp.encoder_kwargs or {}).items())
    print(f"encoder: {hp.encoder}" + (f" ({options})" if options else "") + f"    backend: {hp.backend}")
    print(parameter_table(module.model))
