"""Pre-LN ViT blocks in the OpenCLIP layout (TiTok, and any ViT that loads OpenCLIP-style weights).

``ResidualAttentionBlock``: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` with a GELU MLP named
``c_fc``/``c_proj`` as in OpenCLIP. Attention is the library's one ``Attention`` block (fused
``qkv`` + ``proj``, SDPA); OpenCLIP's ``attn.in_proj_*``/``attn.out_proj.*`` map onto
``attn.qkv.*``/``attn.proj.*`` one to one (same row order: q, k, v, heads contiguous). Tensors are
batch-first ``[B, L, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, PositiveFloat, PositiveInt
from .attention import Attention
from .linear import Linear

__all__ = ["MLP", "ResidualAttentionBlock", "Transformer"]


class MLP(nn.Module):
    """``c_proj(gelu(c_fc(x)))``, hidden width ``dim * mlp_ratio`` (exact erf GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = Linear(dim, hidden)
        self.gelu = nn.GELU()
        self.c_proj = Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c_fc.fuses_gelu(x):  # CPU bf16 autocast: GELU as the GEMM's post-op (oneDNN)
            return self.c_proj(self.c_fc.forward_gelu(x))
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block ``[B, L, D] -> [B, L, D]`` (biases everywhere, LN eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, proj_bias=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, keep: slice | None = None
    ) -> torch.Tensor:
        """``keep``: compute only these rows of the output, ``[B, len(keep), D]`` (exactly those
        rows of the full result; every row still serves as a key and value)."""
        if keep is None:
            x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
        else:
            x = x[:, keep] + self.attn(self.ln_1(x), attn_mask=attn_mask, query_rows=keep)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.ModuleList):
    """A stack of ``depth`` blocks; a ``ModuleList`` so state keys read ``<name>.<i>.attn...``."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__(ResidualAttentionBlock(dim, num_heads, mlp_ratio) for _ in range(depth))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, keep: slice | None = None
    ) -> torch.Tensor:
        """``[B, L, D] -> [B, L, D]``, or with ``keep`` only those output rows: the last block
        then skips the attention queries, output projection and MLP of the rows nobody reads
        (TiTok keeps its latent tokens out of the encoder, its patch tokens out of the decoder)."""
        for i, block in enumerate(self):
            x = block(x, attn_mask=attn_mask, keep=keep if i == len(self) - 1 else None)
        return x


@dataclass
class ViTSizes(Config):
    """Encoder and decoder transformer sizes of the 1D tokenizers' configs (TiTok, TiTok-3D, and
    ReTok's two Q-Formers), with the rule that the heads divide the width."""

    encoder_width: PositiveInt = 512
    encoder_depth: PositiveInt = 8
    encoder_heads: PositiveInt = 8
    decoder_width: PositiveInt = 512
    decoder_depth: PositiveInt = 8
    decoder_heads: PositiveInt = 8
    mlp_ratio: PositiveFloat = 4.0

    def validate(self):
        super().validate()
        for part in ("encoder", "decoder"):
            width, heads = getattr(self, f"{part}_width"), getattr(self, f"{part}_heads")
            if width % heads:
                raise ValueError(
                    f"{type(self).__name__}.{part}_heads {heads} must divide {part}_width {width}"
                )
        return self
