"""DETR-style pre-norm Q-Former layer (queries attend to themselves, then to a memory sequence).

The layer of DETR's ``TransformerDecoderLayer`` (``normalize_before=True``), as ReTok's 2D->1D
encoder and 1D->2D decoder use it:

* ``x = x + self_attn(q = k = norm1(x) + query_pos, v = norm1(x))``;
* ``x = x + cross_attn(q = norm2(x) + query_pos, k = memory + pos, v = memory)``;
* ``x = x + linear2(gelu(linear1(norm3(x))))``.

Both attentions are the library's one ``Attention`` block (its ``context``/``q_pos``/``k_pos``
inputs). Official ``self_attn.in_proj_*``/``multihead_attn.in_proj_*`` (``nn.MultiheadAttention``,
rows q, k, v) map onto ``self_attn.qkv.*``/``cross_attn.qkv.*``, ``out_proj`` onto ``proj``.
Tensors are batch-first ``[B, L, D]``; position tables ``[L, D]`` or ``[B, L, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .linear import Linear

__all__ = ["QFormerLayer"]


class QFormerLayer(nn.Module):
    """Pre-norm self-attention, cross-attention and GELU MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.cross_attn = Attention(dim, num_heads)
        self.linear1 = Linear(dim, int(dim * mlp_ratio))
        self.linear2 = Linear(int(dim * mlp_ratio), dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [B, L, D]`` queries, ``memory: [B, S, D]``; ``pos`` [S, D] and ``query_pos`` [L, D]
        are added to keys / queries only."""
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, q_pos=query_pos, k_pos=query_pos))
        h = self.norm2(x)
        x = x + self.dropout(self.cross_attn(h, context=memory, q_pos=query_pos, k_pos=pos))
        h = self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(x)))))
        return x + self.dropout(h)
