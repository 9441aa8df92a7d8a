"""The building blocks of BEIT-3's multiway transformer (`evf.encoders.beit3.modeling` assembles them),
with the numerics of torchscale 0.3.0: per-modality ("multiway") linears and LayerNorms, pre-norm
blocks with sub-LN in attention and FFN, exact GELU in fp32, learned positions from row 2 of each
table (a fairseq convention), and the attention mask of a layer's route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from evf.encoders.beit3.fusion import TEXT, Route

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
    """fc1 -> GELU (computed in fp32) -> LayerNorm (sub-LN; identity without it) -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, eps: float, sub_ln: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim, eps=eps) if sub_ln else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N,T,D]`` -> ``[N,T,D]``."""
        x = self.fc1(x)
        return self.fc2(self.norm(F.gelu(x.float()).type_as(x)))


class MultiwayAttention(nn.Module):
    """Self-attention over the tokens of all key modalities, with per-modality projections; with
    ``sub_ln`` a LayerNorm on the attention output before the output projection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        queries: Iterable[str],
        keys: Iterable[str],
        eps: float,
        sub_ln: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        linear = partial(nn.Linear, dim, dim)
        self.q = Multiway(linear, queries)
        self.k = Multiway(linear, keys)
        self.v = Multiway(linear, keys)
        norm = partial(nn.LayerNorm, dim, eps=eps) if sub_ln else nn.Identity
        self.inner_norm = Multiway(norm, queries)
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
        sub_ln: bool = True,
    ) -> None:
        super().__init__()
        self.attn_norm = Multiway(partial(nn.LayerNorm, dim, eps=eps), keys)
        self.attn = MultiwayAttention(dim, num_heads, queries, keys, eps, sub_ln)
        self.mlp_norm = Multiway(partial(nn.LayerNorm, dim, eps=eps), queries)
        self.mlp = Multiway(partial(FeedForward, dim, mlp_dim, eps, sub_ln), queries)
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


__all__ = [
    "POSITION_OFFSET",
    "DropPath",
    "FeedForward",
    "Multiway",
    "MultiwayAttention",
    "MultiwayBlock",
    "TextEmbedding",
    "Tokens",
    "VisionEmbedding",
    "layer_mask",
]
