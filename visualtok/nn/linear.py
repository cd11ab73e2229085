"""The one linear layer of visualtok: CPU fp32 inference may run through oneDNN, everything else
runs through ``F.linear``.

Why: on x86, PyTorch's stock fp32 ``F.linear`` calls the BLAS it was built with (MKL in the
official wheels); MKL dispatches its kernels by CPU vendor and on non-Intel processors may use its
AVX2 code path even where AVX-512 exists. oneDNN (the library PyTorch already uses for its CPU
convolutions) dispatches by instruction set and computes the same fp32 product (no bf16 or tf32
down-conversion). ``benchmarks/bench_titok.py`` measures both GEMM peaks in every run.

The oneDNN route is fail-safe: the private op (``torch.ops.mkldnn._linear_pointwise``) is probed
once, on first use, by a small GEMM checked against a float64 product. If the op is missing, raises,
or disagrees beyond fp32 rounding, every call takes ``F.linear``. It is used only where it is a
drop-in replacement:

* x86 CPU tensors, float32 input, weight and bias, weight contiguous;
* outside the small-GEMM window where the stock BLAS is faster: ``STOCK_ROWS`` (12..48) rows
  (``x.numel() / in_features``) with fewer than ``STOCK_MAX_OUT`` (8192) output features, e.g.
  the qkv/MLP linears of a GPT decode step at batch 16. Measured with
  ``benchmarks/bench_linear.py`` (both routes per model shape, interleaved; RESULTS.md): oneDNN
  is 1.4-2.7x faster at 1-8 rows and at the 16384-wide head, 0.6-0.7x at 16 rows of a
  768x2304 or 768x2048 linear, level at 32 rows and 1.1-1.3x from 64 rows up;
* no autograd graph is being built (the op has no backward);
* CPU autocast off (under autocast ``F.linear`` runs the bf16 path it is meant to run);
* not while ``torch.compile``/``torch.export``/``torch.jit.trace`` traces (traced graphs stay
  portable; Inductor packs weights for oneDNN itself).

``set_cpu_linear_backend("aten")`` (or ``VISUALTOK_CPU_LINEAR=aten``) turns it off.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Linear",
    "onednn_linear_works",
    "cpu_linear_backend",
    "cpu_linear_backend_as",
    "linear",
    "set_cpu_linear_backend",
]

_BACKENDS = ("onednn", "aten")
STOCK_ROWS = range(12, 49)  # with fewer than STOCK_MAX_OUT outputs: F.linear (module docstring)
STOCK_MAX_OUT = 8192
_onednn_ok: bool | None = None  # the probe's verdict, computed once


def onednn_linear_works() -> bool:
    """Whether the oneDNN linear op exists in this build and matches a float64 product (probed on
    first call: a 67x129 @ 129x35 GEMM with bias, 2-D and 3-D inputs, within fp32 rounding)."""
    global _onednn_ok
    if _onednn_ok is None:
        _onednn_ok = _probe_onednn()
    return _onednn_ok


def _probe_onednn() -> bool:
    if not (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(67, 129, generator=g)
    w = torch.randn(35, 129, generator=g)
    b = torch.randn(35, generator=g)
    try:
        with torch.no_grad():
            out2 = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            out3 = torch.ops.mkldnn._linear_pointwise(x.view(1, 67, 129), w, b, "none", [], "")
    except Exception:  # the op exists but does not run here
        return False
    ref = x.double() @ w.double().T + b.double()
    # fp32 GEMM error bound: K * eps * (|x| @ |w|^T + |b|), with K = 129 and eps = 2**-24
    bound = 129 * 2.0**-24 * (x.abs().double() @ w.abs().double().T + b.abs().double())
    return all(
        o.dtype == torch.float32 and o.shape[-2:] == ref.shape
        and bool(((o.reshape(ref.shape).double() - ref).abs() <= bound).all())
        for o in (out2, out3)
    )


def _default_backend() -> str:
    env = os.environ.get("VISUALTOK_CPU_LINEAR", "").strip().lower()
    if env:
        if env not in _BACKENDS:
            raise ValueError(f"VISUALTOK_CPU_LINEAR must be one of {_BACKENDS}, got {env!r}")
        return env
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    return "onednn" if x86 else "aten"


_backend = _default_backend()  # requested; "onednn" still needs onednn_linear_works()


def set_cpu_linear_backend(name: str) -> str:
    """Select the CPU fp32 inference GEMM: ``"onednn"`` or ``"aten"``; returns the previous one."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"CPU linear backend must be one of {_BACKENDS}, got {name!r}")
    if name == "onednn" and not onednn_linear_works():
        raise ValueError("the oneDNN linear op is missing or failed its self-check in this "
                         "PyTorch build; use 'aten'")
    previous, _backend = cpu_linear_backend(), name
    return previous


def cpu_linear_backend() -> str:
    """The CPU fp32 inference GEMM in use (``"onednn"`` or ``"aten"``)."""
    return "onednn" if _backend == "onednn" and onednn_linear_works() else "aten"


@contextlib.contextmanager
def cpu_linear_backend_as(name: str) -> Iterator[None]:
    """Run a block with the given CPU linear backend, restoring the previous one afterwards."""
    previous = set_cpu_linear_backend(name)
    try:
        yield
    finally:
        set_cpu_linear_backend(previous)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if _backend != "onednn" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if x.device.type != "cpu":
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or not weight.is_contiguous():
        return False
    if bias is not None and bias.dtype != torch.float32:
        return False
    if x.dim() < 2 or x.numel() == 0:
        return False
    if x.numel() // x.shape[-1] in STOCK_ROWS and weight.shape[0] < STOCK_MAX_OUT:
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return onednn_linear_works()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x: [..., in]``, ``weight: [out, in]`` (as ``F.linear``)."""
    if _use_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state keys) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
