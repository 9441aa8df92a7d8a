"""BEIT-3's multiway transformer, written for EVF with the numerics of torchscale 0.3.0 ``BEiT3``.

One transformer reads image patches and text tokens. Every linear layer and LayerNorm exists once
per modality ("multiway"): vision tokens go through the ``vision`` copy, text tokens through the
``text`` copy, and self-attention mixes both. As torchscale with unilm's BEIT-3 config: pre-norm
blocks, a LayerNorm inside attention before the output projection and one inside the FFN
("sub-LN"), exact GELU, a final LayerNorm per modality, and learned positions that start at row 2
of each modality's table (a fairseq convention; rows 0 and 1 are never read).

The fusion mode decides which passes run and which parts exist (`evf.encoders.beit3.fusion`): a
part that no pass reads is not built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
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
    Route,
    plan_fusion,
)

POSITION_OFFSET = 2  # fairseq convention: position tables start at row 2
Tokens = dict[str, torch.Tensor]
"""Hidden states per modality, ``[N,T_m,D]``, always in `MODALITIES` order."""


class Multiway(nn.ModuleDict):
    """One copy of a module per modality; tokens of each modality go through their own copy."""

    def __init__(self, make: Callable[[], nn.Module], modalities: Iterable[str]) -> None:
        super().__init__({m: make() for m in modalities})

    def forward(self, xs: Tokens) -> Tokens:
        return {m: self[m](x) for m, x in xs.items()}


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm's ``DropPath`` that torchscale uses."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *(1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class FeedForward(nn.Module):
    """fc1 -> GELU (computed in fp32) -> LayerNorm -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim, eps=eps)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,T,D]`` -> ``[N,T,D]``."""
        x = self.fc1(x)
        return self.fc2(self.norm(F.gelu(x.float()).type_as(x)))


class MultiwayAttention(nn.Module):
    """Self-attention over the tokens of all key modalities, with per-modality projections."""

    def __init__(
        self, dim: int, num_heads: int, queries: Iterable[str], keys: Iterable[str], eps: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        linear = partial(nn.Linear, dim, dim)
        self.q = Multiway(linear, queries)
        self.k = Multiway(linear, keys)
        self.v = Multiway(linear, keys)
        self.inner_norm = Multiway(partial(nn.LayerNorm, dim, eps=eps), queries)
        self.out = Multiway(linear, queries)

    def forward(self, xs: Tokens, queries: tuple[str, ...], mask: torch.Tensor | None) -> Tokens:
        """Attend.

        Args:
            xs: normalised tokens of every key modality, ``[N,T_m,D]``.
            queries: modalities to compute outputs for.
            mask: ``[N,1,Tq,Tk]`` bool (True = may attend, broadcastable) or None.

        Returns:
            Outputs of the query modalities, ``[N,T_m,D]``.
        """
        q = self._heads(torch.cat([self.q[m](xs[m]) for m in queries], dim=1))
        k = self._heads(torch.cat([self.k[m](x) for m, x in xs.items()], dim=1))
        v = self._heads(torch.cat([self.v[m](x) for m, x in xs.items()], dim=1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
        parts = out.split([xs[m].shape[1] for m in queries], dim=1)
        return {m: self.out[m](self.inner_norm[m](part)) for m, part in zip(queries, parts, strict=True)}

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,T,D]`` -> ``[N,H,T,D/H]``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class MultiwayBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + ffn(norm(x))``, per modality."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        queries: tuple[str, ...],
        keys: tuple[str, ...],
        drop_path: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.attn_norm = Multiway(partial(nn.LayerNorm, dim, eps=eps), keys)
        self.attn = MultiwayAttention(dim, num_heads, queries, keys, eps)
        self.mlp_norm = Multiway(partial(nn.LayerNorm, dim, eps=eps), queries)
        self.mlp = Multiway(partial(FeedForward, dim, mlp_dim, eps), queries)
        self.drop_path = DropPath(drop_path)

    def forward(self, xs: Tokens, queries: tuple[str, ...], mask: torch.Tensor | None) -> Tokens:
        """Tokens of the key modalities ``[N,T_m,D]`` -> updated tokens of the query modalities."""
        h = self.attn(self.attn_norm(xs), queries, mask)
        xs = {m: xs[m] + self.drop_path(h[m]) for m in queries}
        h = self.mlp(self.mlp_norm(xs))
        return {m: xs[m] + self.drop_path(h[m]) for m in queries}


class VisionEmbedding(nn.Module):
    """Patches + a CLS token + learned positions (table rows ``2..2+P``; rows 0 and 1 unused)."""

    def __init__(self, img_size: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        num_patches = (img_size // patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(POSITION_OFFSET + 1 + num_patches, dim))

    def forward(
        self, pixels: torch.Tensor, masked: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B,3,E,E]`` -> ``[B,1+P,D]`` (CLS first).

        ``masked`` ``[B,P]`` bool replaces those patches by ``mask_token`` ``[D]`` before the positions
        are added (masked image modelling in pretraining; EVF itself never masks).
        """
        if pixels.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images of {self.img_size}x{self.img_size}, got {tuple(pixels.shape)}")
        x = self.proj(pixels).flatten(2).transpose(1, 2)
        if masked is not None:
            x = torch.where(masked[..., None], mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed[POSITION_OFFSET:]


class TextEmbedding(nn.Module):
    """Token embeddings + learned positions (rows ``2..2+L``); padded positions are zeroed."""

    def __init__(self, vocab_size: int, dim: int, max_positions: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(max_positions, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[N,L]`` ids and mask (1 = real token) -> ``[N,L,D]``."""
        length = input_ids.shape[1]
        if length > self.pos_embed.shape[0] - POSITION_OFFSET:
            raise ValueError(
                f"{length} text tokens, but this model has {self.pos_embed.shape[0]} positions "
                f"of which the first {POSITION_OFFSET} are reserved"
            )
        x = self.tokens(input_ids) + self.pos_embed[POSITION_OFFSET : POSITION_OFFSET + length]
        return x * attention_mask.unsqueeze(-1).to(x.dtype)


def layer_mask(xs: Tokens, route: Route, text_valid: torch.Tensor | None) -> torch.Tensor | None:
    """Mask of one layer: ``[N,1,Tq,Tk]`` bool (True = may attend; broadcastable), or None.

    Keys are the tokens of ``xs`` in modality order. Text padding is never attended to; a
    non-joint layer with both modalities only lets each token attend within its own modality.
    """
    block_diagonal = not route.joint and len(xs) > 1
    if TEXT not in xs and not block_diagonal:
        return None
    first = next(iter(xs.values()))
    valid = [
        text_valid if m == TEXT else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for m, x in xs.items()
    ]
    mask = torch.cat(valid, dim=1)[:, None, None, :]
    if block_diagonal:
        ids = {m: torch.full((x.shape[1],), i, device=first.device) for i, (m, x) in enumerate(xs.items())}
        query_ids = torch.cat([ids[m] for m in route.queries])
        key_ids = torch.cat(list(ids.values()))
        mask = mask & (query_ids[:, None] == key_ids[None, :])
    return mask


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
    ) -> None:
        super().__init__()
        self.plan = plan_fusion(fusion, feature, depth, fusion_layers)
        self.fusion, self.feature = fusion, feature
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
            )
            for i, rate in enumerate(rates)
        )
        self.norm = Multiway(partial(nn.LayerNorm, embed_dim, eps=layernorm_eps), self.plan.normed)
        self.apply(_init_weights)

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
