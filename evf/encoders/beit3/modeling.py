"""BEIT-3's multiway transformer, written for EVF with the numerics of torchscale 0.3.0 ``BEiT3``.

One transformer reads image patches and text tokens. Every linear layer and LayerNorm exists once
per modality ("multiway"): vision tokens go through the ``vision`` copy, text tokens through the
``text`` copy, and self-attention mixes both. As torchscale with unilm's BEIT-3 config: pre-norm
blocks, a LayerNorm inside attention before the output projection and one inside the FFN
("sub-LN"), exact GELU, a final LayerNorm per modality, and learned positions that start at row 2
of each modality's table (a fairseq convention; rows 0 and 1 are never read).

The fusion mode decides which passes run and which parts exist (`evf.encoders.beit3.fusion`): a
part that no pass reads is not built. The blocks themselves are in `evf.encoders.beit3.layers`.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from evf.encoders.base import EncoderPreprocessor, MultimodalEncoder
from evf.encoders.beit3.fusion import (
    FEATURE_READS,
    MODALITIES,
    TEXT,
    VISION,
    Feature,
    Fusion,
    Pass,
    plan_fusion,
)
from evf.encoders.beit3.layers import (
    POSITION_OFFSET,
    Multiway,
    MultiwayBlock,
    TextEmbedding,
    Tokens,
    VisionEmbedding,
    layer_mask,
)

PositionInit = Literal["random", "sincos"]
POSITION_INITS: tuple[PositionInit, ...] = ("random", "sincos")


class BEiT3Encoder(MultimodalEncoder):
    """BEIT-3 as EVF's multimodal encoder: expressions (and their images) -> one vector each.

    Features (paper Table 5), read after the final LayerNorm: ``cls_image`` = the image CLS token
    (vision position 0); ``cls_text`` = the first text token (``<s>``); ``avgpool_image`` = the mean
    of the vision patch tokens (CLS excluded); ``concat`` = ``[cls_image, cls_text]`` (``2D``).

    Args:
        img_size: side of the square input image.
        patch_size: side of a square patch.
        embed_dim: width ``D``.
        depth: number of blocks.
        num_heads: attention heads.
        vocab_size: rows of the token embedding.
        preprocessor: tokenizer and image transform (see `EncoderPreprocessor`).
        mlp_ratio: FFN hidden width / ``D``.
        max_source_positions: rows of the text position table (at most ``max - 2`` tokens).
        layernorm_eps: epsilon of every LayerNorm.
        fusion: ``text``, ``late`` or ``early`` (see `plan_fusion`).
        fusion_layers: with ``early``, the number of leading joint layers (None: all).
        feature: ``cls_image``, ``cls_text``, ``avgpool_image`` or ``concat``.
        drop_path: stochastic-depth rate of the last block (linear from 0 over the blocks).
        grad_checkpointing: recompute each block in backward instead of storing activations.
        sub_ln: BEIT-3's LayerNorms inside attention and FFN (torchscale's ``subln``; every released
            BEIT-3 has them). Without them the blocks are plain pre-norm blocks: at 4 layers and 64 px a
            model with sub-LN does not learn to locate even a single object in 800 steps of 32
            images, the same model without them does (docs/pretraining.md, "Why beit3_tiny has no
            sub-LN").
        position_init: initial vision position table: ``random`` (truncated normal, std 0.02, as
            unilm) or ``sincos`` (2-D sine-cosine of the patch row and column, unit amplitude, still
            learned). Only the random init is affected; a checkpoint replaces either.
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        vocab_size: int,
        preprocessor: EncoderPreprocessor,
        mlp_ratio: float = 4.0,
        max_source_positions: int = 1024,
        layernorm_eps: float = 1e-5,
        fusion: Fusion = "early",
        fusion_layers: int | None = None,
        feature: Feature = "cls_image",
        drop_path: float = 0.0,
        grad_checkpointing: bool = False,
        sub_ln: bool = True,
        position_init: PositionInit = "random",
    ) -> None:
        super().__init__()
        if position_init not in POSITION_INITS:
            raise ValueError(
                f"position_init must be one of {', '.join(POSITION_INITS)}, not {position_init!r}"
            )
        self.plan = plan_fusion(fusion, feature, depth, fusion_layers)
        self.fusion, self.feature = fusion, feature
        self.sub_ln = sub_ln
        self.feature_dim = embed_dim * len(FEATURE_READS[feature])
        self.preprocessor = preprocessor
        self.grad_checkpointing = grad_checkpointing
        embedded = self.plan.embedded
        self.vision_embed = VisionEmbedding(img_size, patch_size, embed_dim) if VISION in embedded else None
        self.text_embed = (
            TextEmbedding(vocab_size, embed_dim, max_source_positions) if TEXT in embedded else None
        )
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            MultiwayBlock(
                embed_dim,
                num_heads,
                int(embed_dim * mlp_ratio),
                self.plan.queries(i),
                self.plan.keys(i),
                rate,
                layernorm_eps,
                sub_ln,
            )
            for i, rate in enumerate(rates)
        )
        self.norm = Multiway(partial(nn.LayerNorm, embed_dim, eps=layernorm_eps), self.plan.normed)
        self.apply(_init_weights)
        if position_init == "sincos" and self.vision_embed is not None:
            with torch.no_grad():
                side = img_size // patch_size
                self.vision_embed.pos_embed[POSITION_OFFSET + 1 :] = sincos_positions(side, embed_dim)

    def checkpoint_architecture(self) -> dict[str, bool]:
        """``sub_ln=False`` when built without sub-LN (a file without those tensors decides it)."""
        return {} if self.sub_ln else {"sub_ln": False}

    def forward(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """``[B,3,E,E]``, ``[N,L]``, ``[N,L]``, ``[N]`` -> ``[N, feature_dim]`` (see the class doc)."""
        tokens = self.forward_tokens(pixels, input_ids, attention_mask, image_index)
        if self.feature == "cls_image":
            return tokens[VISION][:, 0]
        if self.feature == "cls_text":
            return tokens[TEXT][:, 0]
        if self.feature == "avgpool_image":
            return tokens[VISION][:, 1:].mean(dim=1)
        return torch.cat([tokens[VISION][:, 0], tokens[TEXT][:, 0]], dim=-1)

    def forward_tokens(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
        masked_patches: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> Tokens:
        """Final normalised tokens of the modalities the feature reads, one row per expression.

        ``masked_patches`` ``[B,P]`` bool and ``mask_token`` ``[D]``: patches replaced before the
        transformer (masked image modelling, `evf.encoders.beit3.pretraining`).

        Returns:
            ``vision``: ``[N,1+P,D]`` (CLS first) and/or ``text``: ``[N,L,D]`` (rows at padded
            positions carry no meaning).
        """
        text_valid = attention_mask.bool()
        tokens: Tokens = {}
        for p in self.plan.passes:
            embedded = self._embed(
                p.inputs, pixels, input_ids, attention_mask, image_index, masked_patches, mask_token
            )
            out = self._run(embedded, text_valid, p)
            if p.inputs == (VISION,):  # the image-only pass ran once per image
                out = {VISION: out[VISION][image_index]}
            tokens.update(out)
        return {m: tokens[m] for m in MODALITIES if m in tokens}

    @torch.no_grad()
    def cls_attention(
        self,
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor | None:
        """The paper's Figure 5: the last layer's attention from the image [CLS] token to the image
        patches, summed over heads (SDPA returns no weights, so q.k is recomputed for that one query
        only; `forward` is untouched).

        Returns:
            ``[N,h,w]`` with ``h = w = img_size / patch_size`` (each softmax row also covers the
            [CLS] and text keys, so a map sums to at most the number of heads); None when the fusion
            mode computes no image [CLS] in the last layer (``text``).
        """
        run = next((p for p in self.plan.passes if VISION in p.routes[-1].queries), None)
        if run is None:
            return None
        text_valid = attention_mask.bool()
        xs = self._embed(run.inputs, pixels, input_ids, attention_mask, image_index)
        for block, route in zip(self.blocks[:-1], run.routes[:-1], strict=True):
            xs = block(xs, route.queries, layer_mask(xs, route, text_valid))
        if run.inputs == (VISION,):  # the image-only pass ran once per image
            xs = {VISION: xs[VISION][image_index]}
        block, route = self.blocks[-1], run.routes[-1]
        mask = layer_mask(xs, route, text_valid)
        normed = block.attn_norm(xs)
        attn = block.attn
        q = attn._heads(attn.q[VISION](normed[VISION][:, :1]))  # [N,H,1,D/H]: the [CLS] query
        k = attn._heads(torch.cat([attn.k[m](x) for m, x in normed.items()], dim=1))
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [N,H,1,T]
        if mask is not None:
            scores = scores.masked_fill(~mask[..., :1, :], float("-inf"))
        probs = scores.softmax(dim=-1).sum(dim=1)[:, 0]  # [N,T], vision keys first
        side = int(round((xs[VISION].shape[1] - 1) ** 0.5))
        return probs[:, 1 : xs[VISION].shape[1]].unflatten(1, (side, side))

    def _embed(
        self,
        inputs: tuple[str, ...],
        pixels: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_index: torch.Tensor,
        masked_patches: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> Tokens:
        """Embed the inputs of one pass; patches are embedded once per image and gathered per expression
        only for a joint pass."""
        xs: Tokens = {}
        if VISION in inputs:
            xs[VISION] = self.vision_embed(pixels, masked_patches, mask_token)
            if TEXT in inputs:
                xs[VISION] = xs[VISION][image_index]
        if TEXT in inputs:
            xs[TEXT] = self.text_embed(input_ids, attention_mask)
        return xs

    def _run(self, xs: Tokens, text_valid: torch.Tensor, run: Pass) -> Tokens:
        """Embedded tokens of one pass -> final normalised tokens of its outputs."""
        for block, route in zip(self.blocks, run.routes, strict=True):
            mask = layer_mask(xs, route, text_valid)
            if self.grad_checkpointing and torch.is_grad_enabled():
                xs = checkpoint(block, xs, route.queries, mask, use_reentrant=False)
            else:
                xs = block(xs, route.queries, mask)
        return self.norm(xs)


def sincos_positions(side: int, dim: int, base: float = 10.0) -> torch.Tensor:
    """2-D sine-cosine positions of a ``side x side`` patch grid, rows in raster order -> ``[side**2, dim]``:
    a quarter of the channels each for sin / cos of the column and of the row, at ``dim / 4``
    frequencies from 1 down to ``1 / base`` radians per patch. The low base (MAE's is 10,000) suits a
    grid of a few patches: every channel changes visibly across it."""
    if dim % 4:
        raise ValueError(f"sine-cosine positions need a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    freqs = base ** -(torch.arange(dim // 4).float() / (dim // 4))
    x, y = cols.flatten()[:, None] * freqs, rows.flatten()[:, None] * freqs
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


def _init_weights(module: nn.Module) -> None:
    """Random init, used only without a checkpoint: linears as unilm's ``BEiT3Wrapper`` (truncated
    normal, std 0.02, zero bias), token embeddings as torchscale (normal, std ``D**-0.5``), positions
    and CLS truncated normal (std 0.02); LayerNorms and the patch convolution keep torch defaults."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
    elif isinstance(module, TextEmbedding | VisionEmbedding):
        nn.init.trunc_normal_(module.pos_embed, std=0.02)
    if isinstance(module, VisionEmbedding):
        nn.init.trunc_normal_(module.cls_token, std=0.02)
