"""Where EVF depends on open_clip beyond its public API: here, named once, with a test.

open_clip has no public per-tower builder: ``CLIP`` and ``CustomTextCLIP`` always build both towers,
and ``fusion="text"`` must not pay for a ViT-H it never runs. `build_open_clip_tower` therefore calls
the private ``open_clip.model._build_text_tower`` / ``_build_vision_tower`` that ``CLIP.__init__``
uses, as ``(embed_dim, cfg, quick_gelu)``. `internals_problems` lists what an installed open_clip no
longer has, naming its version; tests/test_open_clip_compat.py fails on it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any, Literal

from torch import nn

_TOWER_BUILDERS = {"text": ("_build_text_tower", "text_cfg"), "vision": ("_build_vision_tower", "vision_cfg")}
"""tower -> (open_clip.model function, the name of its config parameter)."""


def open_clip_version() -> str:
    return importlib.metadata.version("open_clip_torch")


def build_open_clip_tower(
    tower: Literal["text", "vision"], embed_dim: int, cfg: dict[str, Any], quick_gelu: bool
) -> nn.Module:
    """open_clip's text or vision tower, built from its config exactly as ``open_clip.CLIP`` builds it."""
    import open_clip.model  # deferred: a slow import

    name, _ = _TOWER_BUILDERS[tower]
    return getattr(open_clip.model, name)(embed_dim, cfg, quick_gelu)


def internals_problems() -> list[str]:
    """What the installed open_clip lacks of the internals used here (empty when all are there)."""
    import open_clip.model

    where = f"open_clip_torch {open_clip_version()}"
    problems = []
    for name, cfg in _TOWER_BUILDERS.values():
        function = getattr(open_clip.model, name, None)
        if function is None:
            problems.append(f"{where}: open_clip.model.{name} is gone")
            continue
        parameters = list(inspect.signature(function).parameters)[:3]
        if parameters != ["embed_dim", cfg, "quick_gelu"]:
            problems.append(
                f"{where}: open_clip.model.{name} takes {parameters}, not (embed_dim, {cfg}, quick_gelu)"
            )
    return problems


__all__ = ["build_open_clip_tower", "internals_problems", "open_clip_version"]
