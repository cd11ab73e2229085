"""The LlamaGen transformer block: pre-norm RMSNorm, attention (the shared ``Attention``), SwiGLU.

Used by the GPT trunk and by the small per-factor head. Attention is
``visualtok.nn.attention.Attention`` with no biases (as LLaMA), rotary embeddings passed per call
and an optional static ``KVCache``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import Attention, KVCache
from ..nn.mlp import SwiGLU

__all__ = ["RMSNorm", "FeedForward", "Block", "ffn_hidden_dim"]


def ffn_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: ``2/3 * 4 * dim`` rounded up to ``multiple_of`` (768 -> 2048)."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` computed in fp32, cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # the same ops in one call
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


FeedForward = SwiGLU  # LlamaGen's name for the block's feed-forward


class Block(nn.Module):
    """``x + attn(norm(x))`` then ``x + ffn(norm(x))``; ``x: [B, L, D]``."""

    def __init__(self, dim: int, num_heads: int, ffn_hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(dim, eps)
        self.attention = Attention(dim, num_heads, qkv_bias=False, proj_bias=False)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = FeedForward(dim, ffn_hidden)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
        cache_positions: torch.Tensor | None = None,
        kv_length: int | None = None,
    ) -> torch.Tensor:
        x = x + self.attention(
            self.attention_norm(x),
            attn_mask=attn_mask,
            is_causal=is_causal,
            rotary=rotary,
            kv_cache=kv_cache,
            cache_positions=cache_positions,
            kv_length=kv_length,
        )
        return x + self.feed_forward(self.ffn_norm(x))
