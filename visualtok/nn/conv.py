"""Convolutional building blocks of the taming/LlamaGen VQGAN family (LlamaGen VQ, ReTok's CNN).

* ``ResnetBlock``: GroupNorm(32) -> swish -> 3x3 conv, twice, plus a 1x1 ``nin_shortcut`` when the
  width changes (no output scaling, unlike the MaskGIT-VQGAN block of ``image/maskgit_vqgan.py``);
* ``AttnBlock``: single-head self-attention over the ``H*W`` positions, GroupNorm first, residual.
  It runs through the library's one ``Attention`` block (fused ``qkv``, SDPA, scale ``C**-0.5``);
  official ``q``/``k``/``v``/``proj_out`` 1x1 convs map onto ``attn.qkv``/``attn.proj``;
* ``Downsample``: pad right and bottom by one, then a stride-2 3x3 conv with no padding;
* ``Upsample``: nearest x2, then a 3x3 conv; ``D2SUpsample``: a 3x3 conv to 4C, then
  ``depth_to_space`` in DCR order (ReTok);
* ``AdaptiveGroupNorm``: non-affine GroupNorm whose scale and shift are Linear maps of a
  conditioning map's per-channel std (unbiased, + eps, sqrt) and mean (ReTok, after MAGVIT-v2).

Tensors are NCHW in fp32 (the parity layout); ``fast_layout`` puts bf16/fp16 activations
channels-last, where oneDNN/cuDNN convolve fastest, and every block keeps the layout it is given.
GroupNorm uses 32 groups and eps 1e-6 everywhere, as upstream (``GroupNorm`` stays accurate on
channels-last inputs, where PyTorch's CPU kernel is not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .linear import Linear

__all__ = [
    "group_norm",
    "GroupNorm",
    "ResnetBlock",
    "AttnBlock",
    "Downsample",
    "Upsample",
    "D2SUpsample",
    "AdaptiveGroupNorm",
    "depth_to_space",
    "fast_layout",
]

NUM_GROUPS = 32


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 activations -> channels-last, fp32 ones -> NCHW (``contiguous``).

    oneDNN (CPU) and cuDNN (GPU) run low-precision convolutions fastest on NHWC (every op after
    the first conv keeps the layout). fp32 stays NCHW: oneDNN's channels-last fp32 kernels sum in
    another order and land 5-8x further from a float64 conv than its NCHW ones (measured ~7e-5 on
    ReTok's CNN features), outside the official-parity tolerances.
    """
    if x.dtype in (torch.bfloat16, torch.float16) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that stays accurate on channels-last inputs.

    PyTorch's CPU channels-last kernel takes the variance as ``E[x^2] - E[x]^2``, which cancels when
    a group's mean is large against its spread (measured: errors up to 13 on ReTok's decoder, where
    GroupNorm(32, 32) normalises single channels; the NCHW kernel is exact to fp32 rounding). So the
    input is first shifted by an estimate of each group's mean (GroupNorm is invariant to a
    per-group shift), taken on a grid of at most 16 x 16 pixels: it only has to be close to the
    mean against the spread, so it costs one subtraction pass.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last):
            B, C, H, W = x.shape
            g = self.num_groups
            grid = x[:, :, :: max(H // 16, 1), :: max(W // 16, 1)]
            mean = grid.mean((2, 3), dtype=torch.float32).view(B, g, C // g).mean(-1, keepdim=True)
            x = x - mean.expand(B, g, C // g).reshape(B, C, 1, 1).to(x.dtype)
        return super().forward(x)


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm(32, channels, eps=1e-6): the VQGAN normalisation."""
    if channels % NUM_GROUPS:
        raise ValueError(f"GroupNorm({NUM_GROUPS}) needs channels divisible by 32; got {channels}")
    return GroupNorm(NUM_GROUPS, channels, eps=1e-6, affine=affine)


class ResnetBlock(nn.Module):
    """``x + conv2(drop(swish(norm2(conv1(swish(norm1(x)))))))``; 1x1 shortcut if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention ``[B, C, H, W] -> [B, C, H, W]`` with a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, num_heads=1)  # SDPA scale 1/sqrt(C), as upstream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        h = self.attn(h).transpose(1, 2).reshape(B, C, H, W)
        return x + h


class Downsample(nn.Module):
    """Halve H and W: zero-pad right/bottom by 1, stride-2 3x3 conv (no padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """DCR depth-to-space ``[B, C*b*b, H, W] -> [B, C, H*b, W*b]``.

    Output channel ``c`` at sub-pixel ``(i, j)`` reads input channel ``(i*b + j)*C + c``: the
    sub-pixel index is the *outer* part of the channel (``pixel_shuffle`` uses the inner part).
    The result keeps the input's layout (NCHW or channels-last), in one copy.
    """
    B, c, h, w = x.shape
    out = c // (block * block)
    if x.is_contiguous():
        x = x.view(B, block, block, out, h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(B, out, h * block, w * block)
    x = x.permute(0, 2, 3, 1).reshape(B, h, w, block, block, out).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, h * block, w * block, out).permute(0, 3, 1, 2)


class D2SUpsample(nn.Module):
    """Double H and W: 3x3 conv to 4C, then DCR ``depth_to_space`` (ReTok's ``d2s_up``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x), 2)


class AdaptiveGroupNorm(nn.Module):
    """``gamma(std(cond)) * GroupNorm(x) + beta(mean(cond))`` per channel.

    ``cond: [B, Z, h, w]``: its spatial per-channel mean and unbiased std (``var() + eps``, then
    sqrt) go through the Linear maps ``gamma``/``beta`` (Z -> C).
    """

    def __init__(self, cond_channels: int, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gn = group_norm(channels, affine=False)
        self.gamma = Linear(cond_channels, channels)
        self.beta = Linear(cond_channels, channels)
        self.eps = eps

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        flat = cond.flatten(2)  # [B, Z, h*w]
        scale = self.gamma((flat.var(dim=-1) + self.eps).sqrt())[:, :, None, None]
        shift = self.beta(flat.mean(dim=-1))[:, :, None, None]
        return scale * self.gn(x) + shift
