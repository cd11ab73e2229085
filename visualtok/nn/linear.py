"""The one linear layer of visualtok: CPU fp32 inference may run through oneDNN, everything else
runs through ``F.linear``.

Why: on x86, PyTorch's stock fp32 ``F.linear`` calls the BLAS it was built with (MKL in the
official wheels); MKL dispatches its kernels by CPU vendor and on non-Intel processors may use its
AVX2 code path even where AVX-512 exists. oneDNN (the library PyTorch already uses for its CPU
convolutions) dispatches by instruction set and computes the same fp32 product (no bf16 or tf32
down-conversion). ``benchmarks/bench_linear.py`` times the routes per model shape.

The oneDNN route is fail-safe: the private ops (``torch.ops.mkldnn._linear_pointwise`` and
``_reorder_linear_weight``) are probed once, on first use, by a small GEMM checked against a
float64 product. If an op is missing, raises, or disagrees beyond fp32 rounding, the calls it
would serve take ``F.linear``. It is used only where it is a drop-in replacement:

* x86 CPU tensors, float32 input, weight and bias, weight contiguous;
* no autograd graph is being built (the op has no backward);
* CPU autocast off (under autocast ``F.linear`` runs the bf16 path it is meant to run);
* not while ``torch.compile``/``torch.export``/``torch.jit.trace`` traces (traced graphs stay
  portable; Inductor packs weights for oneDNN itself).

Per shape (measured with ``benchmarks/bench_linear.py``, all routes interleaved; RESULTS.md):

* ``Linear`` modules at most ``PACKED_MAX_ROWS`` (128) rows (``x.numel() / in_features``), e.g.
  every linear of a GPT decode step, use a copy of the weight pre-packed in oneDNN's blocked
  layout, made on first use and kept on the module (not in its state dict): 1.5-3x faster than
  both ``F.linear`` and unpacked oneDNN at 8-64 rows, level at 1-2 rows. The copy costs the
  weight's memory once more; it is remade when the weight changes (a new tensor, storage, or
  version: optimiser steps, ``load_state_dict``, in-place writes under ``no_grad``; writes through
  ``.data`` bypass version counters, so call ``.to()``/``load_state_dict`` after those) and dropped
  on ``.to()``/``.cpu()``/``.cuda()``, ``deepcopy`` and pickling;
* otherwise (more rows, or the functional :func:`linear`) oneDNN on the plain weight, except in the
  small-GEMM window where the stock BLAS is faster: ``STOCK_ROWS`` (12..48) rows with fewer than
  ``STOCK_MAX_OUT`` (8192) output features. Unpacked oneDNN is 1.4-2.7x faster than ``F.linear``
  at 1-8 rows and at the 16384-wide head, 0.6-0.7x at 16 rows of a 768x2304 or 768x2048 linear,
  level at 32 rows and 1.1-1.3x from 64 rows up.

``set_cpu_linear_backend("aten")`` (or ``VISUALTOK_CPU_LINEAR=aten``) turns all of it off.
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
    "packed_linear_works",
    "cpu_linear_backend",
    "cpu_linear_backend_as",
    "linear",
    "set_cpu_linear_backend",
]

_BACKENDS = ("onednn", "aten")
STOCK_ROWS = range(12, 49)  # with fewer than STOCK_MAX_OUT outputs: F.linear (module docstring)
STOCK_MAX_OUT = 8192
PACKED_MAX_ROWS = 128  # Linear modules up to this many rows: oneDNN on a pre-packed weight
PACK_ROWS_HINT = 16  # the row count oneDNN is told to pack for (any row count runs on it)
_onednn_ok: bool | None = None  # the probe's verdict, computed once
_packed_ok: bool | None = None  # the same for the pre-packed weight route


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
    x, w, b, ref, bound = _probe_data()
    try:
        with torch.no_grad():
            out2 = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            out3 = torch.ops.mkldnn._linear_pointwise(x.view(1, 67, 129), w, b, "none", [], "")
    except Exception:  # the op exists but does not run here
        return False
    return _within_rounding((out2, out3), ref, bound)


def _probe_data() -> tuple[torch.Tensor, ...]:
    """A 67x129 @ 129x35 GEMM with bias, its float64 product and the fp32 error bound."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(67, 129, generator=g)
    w = torch.randn(35, 129, generator=g)
    b = torch.randn(35, generator=g)
    ref = x.double() @ w.double().T + b.double()
    # fp32 GEMM error bound: K * eps * (|x| @ |w|^T + |b|), with K = 129 and eps = 2**-24
    bound = 129 * 2.0**-24 * (x.abs().double() @ w.abs().double().T + b.abs().double())
    return x, w, b, ref, bound


def _within_rounding(outs, ref: torch.Tensor, bound: torch.Tensor) -> bool:
    return all(
        o.dtype == torch.float32 and o.shape[-2:] == ref.shape
        and bool(((o.reshape(ref.shape).double() - ref).abs() <= bound).all())
        for o in outs
    )


def packed_linear_works() -> bool:
    """Whether oneDNN's pre-packed weight route exists and matches a float64 product (probed on
    first call like :func:`onednn_linear_works`, at 1, 16 and 67 rows)."""
    global _packed_ok
    if _packed_ok is None:
        _packed_ok = onednn_linear_works() and _probe_packed()
    return _packed_ok


def _probe_packed() -> bool:
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    x, w, b, ref, bound = _probe_data()
    try:
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS_HINT)
            outs = [torch.ops.mkldnn._linear_pointwise(x[:m], packed, b, "none", [], "")
                    for m in (1, 16, 67)]
    except Exception:  # the op exists but does not run here
        return False
    return all(_within_rounding([o], ref[:m], bound[:m]) for o, m in zip(outs, (1, 16, 67)))


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
    """Whether :func:`linear` takes oneDNN (unpacked weight) for these arguments."""
    if not _onednn_applies(x, weight, bias):
        return False
    return not (x.numel() // x.shape[-1] in STOCK_ROWS and weight.shape[0] < STOCK_MAX_OUT)


def _use_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a ``Linear`` module takes oneDNN on its pre-packed weight for this input."""
    return (_onednn_applies(x, weight, bias) and x.numel() // x.shape[-1] <= PACKED_MAX_ROWS
            and packed_linear_works())


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """oneDNN is a drop-in replacement here (module docstring), whatever the shape."""
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
    return onednn_linear_works()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x: [..., in]``, ``weight: [out, in]`` (as ``F.linear``)."""
    if _use_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state keys) whose forward is :func:`linear`, or, for
    CPU fp32 inference on at most ``PACKED_MAX_ROWS`` rows, oneDNN on a pre-packed copy of the
    weight (module docstring)."""

    _packed: tuple | None = None  # (weight, (data_ptr, version), packed weight), made on use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_packed(x, self.weight, self.bias):
            return torch.ops.mkldnn._linear_pointwise(
                x, self._packed_weight(), self.bias, "none", [], ""
            )
        return linear(x, self.weight, self.bias)

    def _packed_weight(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version)
        cached = self._packed
        if cached is None or cached[0] is not w or cached[1] != key:
            self._packed = None  # free the stale copy before making the new one
            cached = (w, key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS_HINT))
            self._packed = cached
        return cached[2]

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # new parameter tensors (device, dtype): the copy is stale
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()  # deepcopy / pickle: oneDNN tensors have no storage
        state.pop("_packed", None)
        return state
