"""Convolution building blocks shared by the audio codecs: weight-normalised 1D (transposed)
convolutions, EnCodec's length-preserving ("same") padding, and the Snake activation (DAC).

Weight normalisation (Salimans & Kingma 2016) stores ``weight_g [C_out, 1, 1]`` and ``weight_v``
(the official checkpoints' key names) and computes ``weight = g * v / |v|`` per output row with
``torch._weight_norm``, the op behind ``torch.nn.utils.weight_norm``: converted weights give the
very same kernel values. Without autograd (inference) the kernel is computed once and kept until
``g`` or ``v`` change (in-place updates, ``load_state_dict``, ``.to()``); with autograd it is
recomputed every forward so that gradients reach ``g`` and ``v``.

Speed (same values as the plain ops, bit for bit): reflect padding is a copy into a preallocated
buffer plus the few mirrored edge samples (``aten::reflection_pad1d`` is a slow per-element
kernel); a zero padding is no copy at all; Snake runs in place on one temporary. (An activation
written straight into the padded buffer would save a pass but is not bit-identical: a strided
output gives every row a scalar tail, whose ``exp`` differs from the vectorised one by an ulp.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WNConv1d", "WNConvTranspose1d", "Snake", "Stack", "pad1d", "params_key",
    "extra_padding_for_conv1d",
]


def params_key(*params: torch.Tensor) -> tuple:
    """A key that changes whenever one of ``params`` is written in place (version) or replaced
    (pointer, dtype, device): what caches of tensors derived from weights are keyed by."""
    return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)


class Stack(nn.Module):
    """A module whose forward is one ``nn.Sequential``, kept under the attribute name the official
    checkpoints use for it (``stack_attr``: DAC's ``block`` / ``model``, EnCodec's ``layers``)."""

    stack_attr = "layers"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.stack_attr)(x)


class _WeightNormMixin:
    """``weight_g``/``weight_v`` parameters of a conv (``weight_norm`` off: a plain ``weight``)."""

    def _init_weight(self, weight: torch.Tensor, weight_norm: bool) -> None:
        self.weight_norm = weight_norm
        if weight_norm:
            self.weight_v = nn.Parameter(weight.detach().clone())
            self.weight_g = nn.Parameter(torch.norm_except_dim(weight.detach(), 2, 0).clone())
        else:
            self.weight = nn.Parameter(weight.detach().clone())

    def weights_key(self) -> tuple:
        """Changes whenever a weight parameter is written in place or replaced (``.to()``)."""
        return params_key(*((self.weight_v, self.weight_g) if self.weight_norm else (self.weight,)))

    def kernel(self) -> torch.Tensor:
        if not self.weight_norm:
            return self.weight
        v, g = self.weight_v, self.weight_g
        if torch.is_grad_enabled():
            return torch._weight_norm(v, g, 0)
        # inference: reuse the kernel until a parameter is written (version) or replaced (pointer)
        key = self.weights_key()
        cached = self.__dict__.get("_kernel_cache")
        if cached is None or cached[0] != key:
            cached = (key, torch._weight_norm(v, g, 0))
            self.__dict__["_kernel_cache"] = cached
        return cached[1]


class WNConv1d(nn.Module, _WeightNormMixin):
    """``nn.Conv1d`` with optional weight norm; ``padding`` is applied by the conv itself."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, padding: int = 0, bias: bool = True,
                 weight_norm: bool = True) -> None:
        super().__init__()
        ref = nn.Conv1d(in_channels, out_channels, kernel_size, stride, bias=bias)
        self._init_weight(ref.weight, weight_norm)
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self.kernel_size, self.stride, self.dilation, self.padding = (
            kernel_size, stride, dilation, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.kernel(), self.bias, self.stride, self.padding, self.dilation)


_OLA_MAX_IN = 384  # overlap-add transposed conv up to this many input channels (see below)


class WNConvTranspose1d(nn.Module, _WeightNormMixin):
    """``nn.ConvTranspose1d`` with optional weight norm (``weight [C_in, C_out, k]``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, output_padding: int = 0, weight_norm: bool = True) -> None:
        super().__init__()
        ref = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self._init_weight(ref.weight, weight_norm)
        self.bias = nn.Parameter(ref.bias.detach().clone())
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.output_padding = padding, output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() and x.ndim == 3 and self.kernel_size == 2 * self.stride
                and self.output_padding == 0 and x.shape[1] <= _OLA_MAX_IN):
            return self._overlap_add(x)
        return F.conv_transpose1d(x, self.kernel(), self.bias, self.stride, self.padding,
                                  self.output_padding)

    def _overlap_add(self, x: torch.Tensor) -> torch.Tensor:
        """The ``2s``-tap stride-``s`` transposed conv as one GEMM and one overlap-add: each input
        frame's ``2s`` output samples per channel are ``W^T x_t``; output block ``t`` is the first
        half of frame ``t`` plus the second half of frame ``t - 1``. Faster than oneDNN's deconv
        for narrow inputs at inference (measured in benchmarks/RESULTS.md); float sums reordered,
        within ~1e-6 of ``F.conv_transpose1d``."""
        k = self.kernel()
        key = self.weights_key()
        cached = self.__dict__.get("_ola_cache")
        if cached is None or cached[0] != key:
            # [C_in, C_out, 2s] -> rows (half, phase j, c_out), so the GEMM output reshapes to
            # [B, 2, s, C_out, T]
            cached = (key, k.permute(2, 1, 0).reshape(-1, k.shape[0]).contiguous())
            self.__dict__["_ola_cache"] = cached
        b, t, s = x.shape[0], x.shape[-1], self.stride
        c_out = k.shape[1]
        cols = torch.matmul(cached[1], x).view(b, 2, s, c_out, t)
        y = x.new_empty(b, c_out, t + 1, s)
        yv = y.permute(0, 3, 1, 2)  # [B, s, C_out, T + 1] view of y
        torch.add(cols[:, 0], self.bias[:, None], out=yv[..., :t])
        yv[..., t] = self.bias
        yv[..., 1:] += cols[:, 1]
        y = y.view(b, c_out, (t + 1) * s)
        p = self.padding
        return y[..., p : y.shape[-1] - p] if p else y


def extra_padding_for_conv1d(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last window of a strided conv full, so that a transposed conv
    can rebuild ``ceil(length / stride) * stride`` samples (EnCodec's rule)."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal - length


def pad1d(x: torch.Tensor, left: int, right: int, mode: str = "reflect") -> torch.Tensor:
    """``F.pad(x, (left, right), mode)`` on the last dim (no copy when both are 0). Reflect padding
    of a signal shorter than the pad first extends it with zeros on the right (and drops them
    again), as EnCodec does."""
    length = x.shape[-1]
    if left == right == 0:
        return x
    if mode != "reflect":
        return F.pad(x, (left, right), mode)
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        y = F.pad(F.pad(x, (0, extra)), (left, right), "reflect")
        return y[..., : y.shape[-1] - extra]
    if torch.is_grad_enabled() and x.requires_grad:
        return F.pad(x, (left, right), "reflect")
    # a plain copy into the padded buffer plus the mirrored edges: reflection_pad1d's values
    # at a memcpy's speed (that kernel walks element by element)
    out = x.new_empty(*x.shape[:-1], left + length + right)
    out[..., left : left + length] = x
    if left:
        out[..., :left] = out[..., left + 1 : 2 * left + 1].flip(-1)
    if right:
        end = left + length
        out[..., end:] = out[..., end - right - 1 : end - 1].flip(-1)
    return out


class Snake(nn.Module):
    """Snake activation ``x + sin^2(alpha x) / alpha`` with a learned ``alpha [1, C, 1]`` (DAC)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        if torch.is_grad_enabled() and (x.requires_grad or self.alpha.requires_grad):
            y = x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)
        else:  # the same ops in place on one temporary (bit-identical)
            y = torch.mul(self.alpha, x).sin_()
            y.mul_(y).mul_((self.alpha + 1e-9).reciprocal()).add_(x)
        return y.reshape(shape)
