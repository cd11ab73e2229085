"""The gated feed-forward block of LLaMA-style transformers (the GPT, FlexTok).

``SwiGLU``: ``w2(silu(w1 x) * w3 x)`` with no biases, on the library's one ``Linear`` (LLaMA's
parameter names; converters map other releases' names onto them, e.g. FlexTok's ``fc1/fc2/fc3``).
The ViT's GELU MLP with OpenCLIP names is ``visualtok.nn.vit.MLP``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

__all__ = ["SwiGLU"]


class SwiGLU(nn.Module):
    """``[..., dim] -> [..., dim]`` through a gated hidden layer of width ``hidden``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)  # gate (through SiLU)
        self.w3 = Linear(dim, hidden, bias=False)  # value
        self.w2 = Linear(hidden, dim, bias=False)  # output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
