"""Fusion modes of the BEIT-3 encoder (paper Table 3) and the parts each one needs.

``text``: one text-only pass. ``late``: an image-only and a text-only pass. ``early``: one joint
pass whose first ``fusion_layers`` layers attend across modalities and whose later layers attend
within each modality only. A backward liveness walk over the layers (`_plan_pass`) gives, per
layer, which modalities' queries are computed and which modalities are read as keys: the encoder
builds only those parts, so every parameter gets a gradient, and the checkpoint remap drops the
tensors of the parts a mode does not build (`Plan` is the one source of truth for both).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

Fusion = Literal["text", "late", "early"]
Feature = Literal["cls_image", "cls_text", "avgpool_image", "concat"]
VISION, TEXT = "vision", "text"
MODALITIES = (VISION, TEXT)
FEATURE_READS: dict[str, tuple[str, ...]] = {
    "cls_image": (VISION,),
    "avgpool_image": (VISION,),
    "cls_text": (TEXT,),
    "concat": (VISION, TEXT),
}


def _ordered(modalities: Iterable[str]) -> tuple[str, ...]:
    present = set(modalities)
    return tuple(m for m in MODALITIES if m in present)


@dataclass(frozen=True)
class Route:
    """What one layer computes in one pass.

    Attributes:
        queries: modalities whose tokens the layer updates and returns.
        keys: modalities the layer reads and attends to (a superset of ``queries``).
        joint: every query attends to every key; otherwise attention stays within each modality
            (a block-diagonal mask when both modalities are present).
    """

    queries: tuple[str, ...]
    keys: tuple[str, ...]
    joint: bool


@dataclass(frozen=True)
class Pass:
    """One run through the transformer: the embedded ``inputs`` and one route per layer."""

    inputs: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class Plan:
    """The passes of a fusion mode, and from them the parts the encoder builds."""

    passes: tuple[Pass, ...]

    @property
    def depth(self) -> int:
        return len(self.passes[0].routes)

    @property
    def embedded(self) -> tuple[str, ...]:
        """Modalities whose embeddings (tokens and position table) are built."""
        return _ordered(m for p in self.passes for m in p.inputs)

    @property
    def normed(self) -> tuple[str, ...]:
        """Modalities whose final LayerNorm is built (those the feature reads)."""
        return _ordered(m for p in self.passes for m in p.routes[-1].queries)

    def queries(self, layer: int) -> tuple[str, ...]:
        """Modalities with query-side parts in ``layer``: q, inner norm, out, FFN norm and FFN."""
        return _ordered(m for p in self.passes for m in p.routes[layer].queries)

    def keys(self, layer: int) -> tuple[str, ...]:
        """Modalities with key-side parts in ``layer``: attention norm, k and v."""
        return _ordered(m for p in self.passes for m in p.routes[layer].keys)


def plan_fusion(fusion: Fusion, feature: Feature, depth: int, fusion_layers: int | None = None) -> Plan:
    """Check a fusion/feature combination and plan its passes.

    ``text``: one text-only pass, feature ``cls_text``. ``late``: an image-only and a text-only pass,
    feature ``concat`` of both CLS tokens. ``early``: one joint pass where layers ``1..fusion_layers``
    attend across modalities and later layers only within each (None: all layers joint).
    """
    if fusion not in get_args(Fusion) or feature not in get_args(Feature):
        raise ValueError(f"unknown fusion {fusion!r} or feature {feature!r}")
    if fusion == "text" and feature != "cls_text":
        raise ValueError(f"fusion='text' reads no image, so feature must be 'cls_text', not {feature!r}")
    if fusion == "late" and feature != "concat":
        raise ValueError(
            f"fusion='late' concatenates both CLS tokens, so feature must be 'concat', not {feature!r}"
        )
    if fusion_layers is not None and (fusion != "early" or not 1 <= fusion_layers <= depth):
        raise ValueError(
            f"fusion_layers={fusion_layers} needs fusion='early' and 1 <= fusion_layers <= {depth}"
        )
    if fusion == "text":
        passes = (_plan_pass((TEXT,), (TEXT,), depth, depth),)
    elif fusion == "late":
        passes = (_plan_pass((VISION,), (VISION,), depth, depth), _plan_pass((TEXT,), (TEXT,), depth, depth))
    else:
        joint = depth if fusion_layers is None else fusion_layers
        passes = (_plan_pass(MODALITIES, FEATURE_READS[feature], depth, joint),)
    return Plan(passes)


def _plan_pass(inputs: tuple[str, ...], outputs: tuple[str, ...], depth: int, joint_layers: int) -> Pass:
    """Walk back from the outputs: a layer computes only the queries that later layers read."""
    routes: list[Route] = []
    needed = outputs
    for layer in reversed(range(depth)):
        joint = layer < joint_layers
        keys = inputs if joint else needed
        routes.append(Route(queries=needed, keys=keys, joint=joint))
        needed = keys
    return Pass(inputs, tuple(reversed(routes)))
