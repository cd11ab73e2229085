"""The MaskGIT-VQGAN CNN pixel decoder (and its 1024x256 codebook) as TiTok stage 2 uses it.

MaskGIT's VQGAN (Chang et al., 2022) is a taming-style CNN without attention. TiTok's paper
checkpoints predict a softmax over its 1024 codes per 16x16 patch; the softmax-weighted codebook
vectors ``[B, 256, h, w]`` feed this decoder, which upsamples by 2 at each of its 4 upper levels.

Layout (state keys as in the official PyTorch port): ``conv_in``, ``mid.{i}``,
``up.{level}.block.{i}``, ``up.{level}.upsample_conv`` (levels 1..), ``norm_out``, ``conv_out``.
``up`` is indexed by level (0 = full resolution) and run from the coarsest level down.

Quirks kept from the official code:

* "same" padding equals ``padding=k//2`` for the stride-1 odd kernels used here;
* residual blocks have bias-free convs, GroupNorm(32, eps 1e-6) and SiLU;
* when a block changes width, its ``nin_shortcut`` (a 1x1 conv ``out -> out``) is applied to the
  block's *output*, not to its input: ``h + nin_shortcut(h)``. The official checkpoints were trained
  that way, so this is reproduced exactly.

Speed: activations and conv weights are kept channels-last (NHWC). oneDNN (CPU) and cuDNN (GPU)
run NHWC convolutions without per-call layout reorders; on the project's CPU the decoder is about
1.5x faster than in NCHW. The math is unchanged (outputs equal within float rounding) and state
dicts are the same; the decoded images are returned as ordinary contiguous NCHW tensors. Without
autograd the blocks take the fast paths of ``nn.conv``: each nearest x2 + 3x3 conv as one 2x2
conv over the low-resolution phases (``upsample_conv``, 4/9 of those FLOPs), GroupNorm + SiLU in
two passes and in place on the block's own tensors (``group_norm_silu``), the residual add inside
the conv (``conv_add``); with autograd on, the plain ops above.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.conv import GroupNorm, conv_add, group_norm_silu, upsample_conv

__all__ = ["MaskGITResBlock", "MaskGITUpBlock", "MaskGITPixelDecoder"]


def _group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class MaskGITResBlock(nn.Module):
    """``[B, C_in, H, W] -> [B, C_out, H, W]``: norm-SiLU-conv twice, plus the official shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.changes_width = in_channels != out_channels
        if self.changes_width:
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``inplace``: the result may overwrite ``x`` (inference only; the decoder passes its own
        intermediate tensors)."""
        h = self.conv1(group_norm_silu(self.norm1, x))
        h = group_norm_silu(self.norm2, h, inplace=True)  # h is ours: overwritten in inference
        if self.changes_width:
            # Official quirk: with a width change the "residual" is a 1x1 conv of the block output.
            h = self.conv2(h)
            return conv_add(self.nin_shortcut, h, h)
        return conv_add(self.conv2, h, x, inplace=inplace)


class MaskGITUpBlock(nn.Module):
    """``num_res_blocks`` residual blocks, then (above level 0) nearest x2 upsample + 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int,
                 upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            MaskGITResBlock(in_channels if i == 0 else out_channels, out_channels)
            for i in range(num_res_blocks)
        )
        self.upsample = upsample
        if upsample:
            self.upsample_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x, inplace=inplace or i > 0)  # after the first block, x is ours
        if self.upsample:
            x = upsample_conv(self.upsample_conv, x)  # nearest x2 + 3x3 conv, fused in inference
        return x


class MaskGITPixelDecoder(nn.Module):
    """MaskGIT-VQGAN decoder: ``[B, z_channels, h, w] -> [B, 3, h * f, w * f]``, f = 2**(levels-1).

    Defaults are the released model: 128 hidden channels, mult (1, 1, 2, 2, 4), 2 res blocks per
    level, 256-d codes (f16 at 256x256). The output is on the [0, 1] scale, unclamped.
    """

    def __init__(
        self,
        z_channels: int = 256,
        hidden_channels: int = 128,
        channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        mult = tuple(channel_mult)
        self.upsample_factor = 2 ** (len(mult) - 1)
        block_in = hidden_channels * mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList(MaskGITResBlock(block_in, block_in) for _ in range(num_res_blocks))
        up = []
        for level in range(len(mult)):
            level_in = hidden_channels * (mult[-1] if level == len(mult) - 1 else mult[level + 1])
            level_out = hidden_channels * mult[level]
            up.append(MaskGITUpBlock(level_in, level_out, num_res_blocks, upsample=level != 0))
        self.up = nn.ModuleList(up)
        self.norm_out = _group_norm(hidden_channels * mult[0])
        self.conv_out = nn.Conv2d(hidden_channels * mult[0], out_channels, 3, padding=1)
        self.to(memory_format=torch.channels_last)  # conv weights NHWC (see the module docstring)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z.contiguous(memory_format=torch.channels_last))
        for block in self.mid:
            x = block(x, inplace=True)  # every x here is the decoder's own intermediate
        for block in reversed(self.up):
            x = block(x, inplace=True)
        return self.conv_out(group_norm_silu(self.norm_out, x, inplace=True)).contiguous()
