"""The one linear layer of visualtok: CPU fp32 inference runs through oneDNN, everything else
through ``F.linear``.

Why: on x86 PyTorch sends fp32 ``F.linear`` to MKL's sgemm. On AMD processors MKL runs its AVX2
kernels, so on the project's 2-core AMD EPYC (AVX-512) a 2312x1024x3072 GEMM reaches about
180 GFLOP/s, while oneDNN's fp32 GEMM (the library PyTorch already uses for convolutions) reaches
about 430 GFLOP/s on the same shapes, still in full fp32 (no bf16/tf32 down-conversion; the error
against a float64 product is of the same order as MKL's). ``benchmarks/bench_titok.py`` measures
both peaks in every run.

The oneDNN path is taken only where it is a drop-in replacement:

* CPU tensors, float32 input, weight and bias, weight contiguous;
* no autograd graph is being built (inference, ``torch.no_grad``/``inference_mode`` or no
  ``requires_grad`` anywhere), because the oneDNN op has no backward;
* CPU autocast off (under autocast ``F.linear`` runs the bf16 path it is meant to run);
* not inside ``torch.compile``/``torch.export``/``torch.jit.trace`` tracing (Inductor packs weights
  for oneDNN itself, and traced graphs must stay portable).

``set_cpu_linear_backend("aten")`` (or ``VISUALTOK_CPU_LINEAR=aten`` in the environment) turns it
off, e.g. to compare against the stock path.
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
    "cpu_linear_backend",
    "cpu_linear_backend_as",
    "linear",
    "set_cpu_linear_backend",
]

_BACKENDS = ("onednn", "aten")


def _default_backend() -> str:
    env = os.environ.get("VISUALTOK_CPU_LINEAR", "").strip().lower()
    if env:
        if env not in _BACKENDS:
            raise ValueError(f"VISUALTOK_CPU_LINEAR must be one of {_BACKENDS}, got {env!r}")
        return env
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    has_op = hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return "onednn" if x86 and has_op and torch.backends.mkldnn.is_available() else "aten"


_backend = _default_backend()


def set_cpu_linear_backend(name: str) -> str:
    """Select the CPU fp32 inference GEMM: ``"onednn"`` or ``"aten"``; returns the previous one."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"CPU linear backend must be one of {_BACKENDS}, got {name!r}")
    if name == "onednn" and not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        raise ValueError("the oneDNN linear backend is not available in this PyTorch build")
    previous, _backend = _backend, name
    return previous


def cpu_linear_backend() -> str:
    """The CPU fp32 inference GEMM currently in use (``"onednn"`` or ``"aten"``)."""
    return _backend


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
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x: [..., in]``, ``weight: [out, in]`` (as ``F.linear``)."""
    if _use_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state keys) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
