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

Inference fast paths (no autograd; each falls back to the plain ops elsewhere, same math):

* ``group_norm_silu``: ``silu(norm(x))`` on CPU fp32 channels-last in two memory passes, cache-sized
  chunks, shifted fp64 statistics (as accurate as PyTorch's NCHW kernel), in place when allowed;
* ``conv_add``: ``residual + conv(x)`` with the add as oneDNN's sum post-op (CPU fp32);
* ``upsample_conv``: nearest x2 then a 3x3 conv, as one 2x2 conv at the low resolution with the four
  output phases' summed kernels (4/9 of the FLOPs), the phases interleaved in one copy.

On the CPU, tensors over 32 MiB are fresh ``mmap`` pages on every allocation (glibc's threshold):
each one costs about as much as two passes over it, so the in-place variants matter at full
resolution.
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
    "group_norm_silu",
    "conv_add",
    "upsample_conv",
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


def _weights_key(*params: torch.Tensor | None) -> tuple:
    """Changes when a parameter is written in place (version) or replaced (pointer, dtype,
    device): the key of the tensors cached from a module's weights."""
    return tuple(None if p is None else (p._version, p.data_ptr(), p.dtype, p.device)
                 for p in params)


def _cpu_fp32_inference(*tensors: torch.Tensor) -> bool:
    """No autograd, no CPU autocast, every tensor a 4-D fp32 CPU tensor: the fast paths' domain."""
    return (not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.ndim == 4
                    for t in tensors))


_CHUNK = 1 << 18  # elements per chunk of group_norm_silu (1 MiB of fp32: one core's L2)


def group_norm_silu(norm: nn.GroupNorm, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``silu(norm(x))``; with ``inplace`` the result may overwrite ``x`` (inference only).

    CPU fp32 channels-last inference runs it in two passes over memory: per-channel sums of
    ``x - m`` and its squares in fp64 (``m``: a per-channel mean estimate on a <= 16 x 16 grid, so
    nothing cancels), then ``x * scale + shift`` and SiLU, each on cache-sized row chunks. Group
    statistics combine the channels' exactly (pooled mean and sum of squared deviations). Elsewhere
    (autograd, autocast, NCHW, other dtypes) it is the module and ``F.silu``.
    """
    if not (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and _cpu_fp32_inference(x)):
        return F.silu(norm(x), inplace=not torch.is_grad_enabled())
    B, C, H, W = x.shape
    G, n = norm.num_groups, H * W
    rows = max(_CHUNK // C, 1)
    xs = x.permute(0, 2, 3, 1).view(B, n, C)
    m = x[:, :, :: max(H // 16, 1), :: max(W // 16, 1)].mean((2, 3))  # [B, C]
    s1 = x.new_zeros(B, C, dtype=torch.float64)
    s2 = x.new_zeros(B, C, dtype=torch.float64)
    for b in range(B):
        for r in range(0, n, rows):
            d = xs[b, r:r + rows] - m[b]
            s1[b] += d.sum(0)
            s2[b] += d.square_().sum(0)
    mean_c = (m.double() + s1 / n).view(B, G, -1)
    ss_c = (s2 - s1 * s1 / n).view(B, G, -1)  # per-channel sum of squared deviations
    mean_g = mean_c.mean(-1, keepdim=True)
    var_g = (ss_c.sum(-1, keepdim=True) + n * (mean_c - mean_g).square().sum(-1, keepdim=True))
    rstd = (var_g / (n * (C // G)) + norm.eps).rsqrt()
    scale = rstd.expand(B, G, C // G).reshape(B, C)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -mean_g.expand(B, G, C // G).reshape(B, C) * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    scale, shift = scale.float(), shift.float()
    out = x if inplace else torch.empty_like(x)
    outs = out.permute(0, 2, 3, 1).view(B, n, C)
    for b in range(B):
        for r in range(0, n, rows):
            o = outs[b, r:r + rows]
            F.silu(torch.addcmul(shift[b], xs[b, r:r + rows], scale[b], out=o), inplace=True)
    return out


def _conv_args(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> list | None:
    """``[padding, stride, dilation, groups]`` for oneDNN's conv ops when ``conv(x)`` has
    ``residual``'s shape; None if the fused op can't run it."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
            zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    if list(residual.shape) != [x.shape[0], conv.out_channels, *size]:
        return None
    return [list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups]


def conv_add(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor,
             inplace: bool = False) -> torch.Tensor:
    """``residual + conv(x)``; with ``inplace`` the sum may overwrite ``residual`` (inference only).

    CPU fp32 inference with ``x`` and ``residual`` in one layout runs the add inside oneDNN's conv
    (its sum post-op on the accumulator): no separate pass over the output, and with ``inplace``
    no new output tensor. The convolution itself is the one ``conv(x)`` runs (same result bits).
    """
    fmt = torch.channels_last if not x.is_contiguous() else torch.contiguous_format
    args = _conv_args(conv, x, residual) if _cpu_fp32_inference(x, residual) else None
    if (args is None or conv.weight.dtype != torch.float32
            or not torch.backends.mkldnn.is_available()
            or not (x.is_contiguous(memory_format=fmt)
                    and residual.is_contiguous(memory_format=fmt))):
        return residual + conv(x)
    w, post = conv.weight.contiguous(memory_format=fmt), ("add", 1.0, None, [], None)
    if inplace:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, w, conv.bias, *args, *post)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, w, conv.bias, *args, *post)


def _phase_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[O, I, 3, 3]`` -> ``[4 O, I, 2, 2]``: the kernels of a 3x3 conv after nearest x2, per
    output phase ``(a, b)`` (row and column parity, ``a`` outer), on the low-resolution input.

    Output row ``2i + a`` reads upsampled rows ``2i + a - 1 .. 2i + a + 1``, i.e. input rows
    ``(i - 1, i)`` with taps ``(w0, w1 + w2)`` for ``a = 0`` and ``(i, i + 1)`` with
    ``(w0 + w1, w2)`` for ``a = 1``; columns alike. Sums are taken in float64, rounded once.
    """
    w = weight.detach().double()

    def pairs(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0, t1, t2 = t.unbind(dim)
        return torch.stack([t0, t1 + t2], dim), torch.stack([t0 + t1, t2], dim)

    phases = [pc for pr in pairs(w, 2) for pc in pairs(pr, 3)]  # (0,0), (0,1), (1,0), (1,1)
    return torch.cat(phases, 0).to(weight.dtype)


def upsample_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(F.interpolate(x, scale_factor=2, mode="nearest"))`` for a 3x3 stride-1 padding-1 conv.

    Without autograd it runs as one 2x2 conv (padding 1) on ``x`` with the four output phases'
    kernels (``_phase_weight``, cached on ``conv`` until its weight changes): 16 taps per input
    pixel instead of 36, and no upsampled copy of ``x``; one strided copy interleaves the phases
    into the output, in ``x``'s layout. The result equals the plain route to fp32 rounding (the
    summed taps are rounded once, from float64). Other convs, or autograd: the plain route.
    """
    plain = (conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1)
             or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros"
             or x.ndim != 4)
    if plain or torch.is_grad_enabled():
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    key = _weights_key(conv.weight, conv.bias)
    cached = conv.__dict__.get("_phase_cache")
    if cached is None or cached[0] != key:
        conv.__dict__.pop("_phase_cache", None)  # free the stale copy first
        w = _phase_weight(conv.weight).contiguous(memory_format=torch.channels_last
                                                  if not conv.weight.is_contiguous()
                                                  else torch.contiguous_format)
        b = None if conv.bias is None else conv.bias.detach().repeat(4)
        cached = conv.__dict__["_phase_cache"] = (key, w, b)
    y = F.conv2d(x, cached[1], cached[2], padding=1)  # [B, 4 O, H + 1, W + 1]
    B, _, H, W = x.shape
    O = y.shape[1] // 4
    sB, sC, sH, sW = y.stride()
    # out[b, o, 2i + a, 2j + c] = y[b, (2a + c) O + o, i + a, j + c]
    phases = y.as_strided((B, O, H, 2, W, 2), (sB, sC, sH, 2 * O * sC + sH, sW, O * sC + sW),
                          y.storage_offset())
    fmt = torch.channels_last if not y.is_contiguous() else torch.contiguous_format
    out = torch.empty((B, O, 2 * H, 2 * W), dtype=y.dtype, device=y.device, memory_format=fmt)
    out.view(B, O, H, 2, W, 2).copy_(phases)
    return out


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
