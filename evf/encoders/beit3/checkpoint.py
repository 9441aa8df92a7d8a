"""Remap of the official unilm BEIT-3 checkpoints to `BEiT3Encoder`.

``beit3_{base,large}_patch16_224.pth`` hold the state dict under ``model`` with keys of torchscale's
``BEiT3`` prefixed ``beit3.``. torchscale's multiway copies ``A`` / ``B`` become our ``vision`` /
``text`` copies:

| unilm (under ``beit3.``)                                  | ours                                   |
|-----------------------------------------------------------|----------------------------------------|
| ``vision_embed.proj.*``, ``vision_embed.cls_token``       | ``vision_embed.proj.*``, ``.cls_token``|
| ``encoder.embed_positions.A.weight``                      | ``vision_embed.pos_embed``             |
| ``text_embed.weight``                                     | ``text_embed.tokens.weight``           |
| ``encoder.embed_positions.B.weight``                      | ``text_embed.pos_embed``               |
| ``encoder.layers.{i}.self_attn_layer_norm.{A,B}.*``       | ``blocks.{i}.attn_norm.{vision,text}.*``|
| ``encoder.layers.{i}.self_attn.{q,k,v,out}_proj.{A,B}.*`` | ``blocks.{i}.attn.{q,k,v,out}.{..}.*`` |
| ``encoder.layers.{i}.self_attn.inner_attn_ln.{A,B}.*``    | ``blocks.{i}.attn.inner_norm.{..}.*``  |
| ``encoder.layers.{i}.final_layer_norm.{A,B}.*``           | ``blocks.{i}.mlp_norm.{..}.*``         |
| ``encoder.layers.{i}.ffn.{A,B}.{fc1,fc2}.*``              | ``blocks.{i}.mlp.{..}.{fc1,fc2}.*``    |
| ``encoder.layers.{i}.ffn.{A,B}.ffn_layernorm.*``          | ``blocks.{i}.mlp.{..}.norm.*``         |
| ``encoder.layer_norm.{A,B}.*``                            | ``norm.{vision,text}.*``               |

Dropped on purpose: ``vision_embed.mask_token`` (the masked-image-modelling token of pretraining;
EVF never masks patches), and, for an encoder whose fusion mode does not build some parts (see
`Plan`), the tensors of exactly those parts. Any other key is an error.
"""

from __future__ import annotations

import re

from evf.checkpoint import CheckpointFormat, Rule
from evf.encoders.beit3.fusion import TEXT, VISION, Plan

_WAYS = (("A", VISION), ("B", TEXT))  # torchscale's MultiwayNetwork: A = vision copy, B = text copy
_UNBUILT = "not built: no pass of this fusion mode / feature reads it"


def beit3_rules(prefix: str = "beit3.", plan: Plan | None = None) -> tuple[Rule, ...]:
    """Rules mapping torchscale ``BEiT3`` keys under ``prefix`` to `BEiT3Encoder` keys.

    Args:
        prefix: literal key prefix of the BEIT-3 tensors (``beit3.`` in unilm's files,
            ``mm_extractor.beit3.`` in EVF-SAM's released checkpoints).
        plan: the encoder's `Plan`; the tensors of parts it does not build are dropped on purpose.
            None: every part is built.
    """
    p = re.escape(prefix)
    layer = rf"{p}encoder\.layers\.(\d+)\."
    rules = _unbuilt_rules(p, plan) if plan is not None else []
    rules += [
        Rule(rf"{p}vision_embed\.mask_token", None, "masked-image-modelling token; EVF never masks patches"),
        Rule(rf"{p}vision_embed\.proj\.(weight|bias)", r"vision_embed.proj.\1"),
        Rule(rf"{p}vision_embed\.cls_token", "vision_embed.cls_token"),
        Rule(rf"{p}encoder\.embed_positions\.A\.weight", "vision_embed.pos_embed"),
        Rule(rf"{p}text_embed\.weight", "text_embed.tokens.weight"),
        Rule(rf"{p}encoder\.embed_positions\.B\.weight", "text_embed.pos_embed"),
    ]
    for way, m in _WAYS:
        rules += [
            Rule(rf"{layer}self_attn_layer_norm\.{way}\.(weight|bias)", rf"blocks.\1.attn_norm.{m}.\2"),
            Rule(rf"{layer}self_attn\.(q|k|v|out)_proj\.{way}\.(weight|bias)", rf"blocks.\1.attn.\2.{m}.\3"),
            Rule(
                rf"{layer}self_attn\.inner_attn_ln\.{way}\.(weight|bias)",
                rf"blocks.\1.attn.inner_norm.{m}.\2",
            ),
            Rule(rf"{layer}final_layer_norm\.{way}\.(weight|bias)", rf"blocks.\1.mlp_norm.{m}.\2"),
            Rule(rf"{layer}ffn\.{way}\.(fc1|fc2)\.(weight|bias)", rf"blocks.\1.mlp.{m}.\2.\3"),
            Rule(rf"{layer}ffn\.{way}\.ffn_layernorm\.(weight|bias)", rf"blocks.\1.mlp.{m}.norm.\2"),
            Rule(rf"{p}encoder\.layer_norm\.{way}\.(weight|bias)", rf"norm.{m}.\1"),
        ]
    return tuple(rules)


def _unbuilt_rules(p: str, plan: Plan) -> list[Rule]:
    """Drop rules for the parts ``plan`` does not build: embeddings of a modality no pass reads,
    key-side parts (attention norm, k, v) and query-side parts (q, inner norm, out, FFN norm, FFN)
    of a modality in a layer, and the final norm of a modality the feature does not read."""
    rules: list[Rule] = []
    for way, m in _WAYS:
        if m not in plan.embedded:
            embed = (
                r"vision_embed\.(proj\.(weight|bias)|cls_token|mask_token)"
                if m == VISION
                else r"text_embed\.weight"
            )
            rules += [
                Rule(rf"{p}{embed}", None, _UNBUILT),
                Rule(rf"{p}encoder\.embed_positions\.{way}\.weight", None, _UNBUILT),
            ]
        if m not in plan.normed:
            rules.append(Rule(rf"{p}encoder\.layer_norm\.{way}\.(weight|bias)", None, _UNBUILT))
        for i in range(plan.depth):
            layer = rf"{p}encoder\.layers\.{i}\."
            if m not in plan.keys(i):
                parts = r"(self_attn_layer_norm|self_attn\.[kv]_proj)"
                rules.append(Rule(rf"{layer}{parts}\.{way}\.(weight|bias)", None, _UNBUILT))
            if m not in plan.queries(i):
                parts = r"(self_attn\.(q_proj|out_proj|inner_attn_ln)|final_layer_norm)"
                rules += [
                    Rule(rf"{layer}{parts}\.{way}\.(weight|bias)", None, _UNBUILT),
                    Rule(rf"{layer}ffn\.{way}\.(fc1|fc2|ffn_layernorm)\.(weight|bias)", None, _UNBUILT),
                ]
    return rules


def beit3_export_rules(prefix: str = "beit3.") -> tuple[Rule, ...]:
    """The inverse of `beit3_rules`: `BEiT3Encoder` keys -> torchscale ``BEiT3`` keys under ``prefix``
    (for writing EVF-SAM's released layout). Every tensor of any fusion mode matches one rule;
    torchscale's ``vision_embed.mask_token`` (`TORCHSCALE_ONLY`) has no counterpart here."""
    layer = rf"{prefix}encoder.layers.\1."
    attn = rf"{layer}self_attn."
    rules = [
        Rule(r"vision_embed\.proj\.(weight|bias)", rf"{prefix}vision_embed.proj.\1"),
        Rule(r"vision_embed\.cls_token", f"{prefix}vision_embed.cls_token"),
        Rule(r"vision_embed\.pos_embed", f"{prefix}encoder.embed_positions.A.weight"),
        Rule(r"text_embed\.tokens\.weight", f"{prefix}text_embed.weight"),
        Rule(r"text_embed\.pos_embed", f"{prefix}encoder.embed_positions.B.weight"),
    ]
    for way, m in _WAYS:
        rules += [
            Rule(rf"blocks\.(\d+)\.attn_norm\.{m}\.(weight|bias)", rf"{layer}self_attn_layer_norm.{way}.\2"),
            Rule(rf"blocks\.(\d+)\.attn\.(q|k|v|out)\.{m}\.(weight|bias)", rf"{attn}\2_proj.{way}.\3"),
            Rule(rf"blocks\.(\d+)\.attn\.inner_norm\.{m}\.(weight|bias)", rf"{attn}inner_attn_ln.{way}.\2"),
            Rule(rf"blocks\.(\d+)\.mlp_norm\.{m}\.(weight|bias)", rf"{layer}final_layer_norm.{way}.\2"),
            Rule(rf"blocks\.(\d+)\.mlp\.{m}\.(fc1|fc2)\.(weight|bias)", rf"{layer}ffn.{way}.\2.\3"),
            Rule(rf"blocks\.(\d+)\.mlp\.{m}\.norm\.(weight|bias)", rf"{layer}ffn.{way}.ffn_layernorm.\2"),
            Rule(rf"norm\.{m}\.(weight|bias)", rf"{prefix}encoder.layer_norm.{way}.\1"),
        ]
    return tuple(rules)


TORCHSCALE_ONLY = ("vision_embed.mask_token",)
"""torchscale ``BEiT3`` tensors (under the prefix) that no `BEiT3Encoder` builds; each is ``[1,1,D]``."""


def unilm_beit3_state(encoder_state: dict, source: str) -> dict:
    """A `BEiT3Encoder` state dict under unilm's ``beit3.*`` names, the tensors of a file that
    `create_encoder(..., checkpoint=)` loads (``{"model": ...}``); ``source`` names it in errors."""
    return CheckpointFormat("unilm_beit3 (export)", beit3_export_rules("beit3.")).remap(encoder_state, source)


def unilm_beit3_format(plan: Plan | None = None) -> CheckpointFormat:
    """The unilm format for an encoder built with ``plan`` (None: every part built).

    Nothing is allow-listed as missing: every tensor the encoder builds comes from the file.
    """
    return CheckpointFormat(name="unilm_beit3", rules=beit3_rules("beit3.", plan), allow_missing=())


UNILM_BEIT3 = unilm_beit3_format()
"""unilm's ``beit3_*_patch16_224.pth`` for an encoder that builds every part (``early`` + ``concat``)."""
