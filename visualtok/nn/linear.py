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

Per shape (measured with ``benchmarks/bench_linear.py``, all routes interleaved, and inside a
GPT-B cached step, where every weight streams from memory once per step; RESULTS.md):

* ``Linear`` modules on ``PACKED_ROWS`` (3..128) rows (``x.numel() / in_features``), e.g. every
  linear of a GPT decode step at batch 4-64, use a copy of the weight pre-packed in oneDNN's
  blocked layout, made on first use and kept on the module (not in its state dict): 1.5-3x faster
  than both ``F.linear`` and unpacked oneDNN at 8-64 rows (a whole GPT-B step at batch 8: 54 ms
  against 95-97 ms). At 1-2 rows (GEMV) the packed layout is slower than the plain one. The copy
  costs the weight's memory once more; it is remade when the weight changes (a new tensor,
  storage, or version: optimiser steps, ``load_state_dict``, in-place writes under ``no_grad``;
  writes through ``.data`` bypass version counters, so call ``.to()``/``load_state_dict`` after
  those) and dropped on ``.to()``/``.cpu()``/``.cuda()``, ``deepcopy`` and pickling;
* ``Linear`` modules under CPU bf16 autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``)
  keep a pre-packed bf16 copy of the fp32 weight too and run oneDNN's bf16 GEMM on it: the GEMM
  autocast's ``F.linear`` would run (bf16 inputs, fp32 accumulation, bf16 output) without casting
  the weight on every call; only on CPUs where oneDNN runs bf16 natively (avx512_bf16/AMX).
  ``Linear.forward_gelu`` (the ViT MLP) also fuses the exact GELU into that GEMM. A bf16
  module on bf16 inputs (outside autocast) runs the same GEMM on a pre-packed copy of its bf16
  weight (1.05-5.5x ``F.linear``'s bf16 GEMM from 1 to 1024 rows);
* ``Linear`` modules on 1 row (a GEMV, e.g. a GPT decode step at batch 1) with at least as many
  outputs as inputs keep a copy of the weight transposed to ``[in, out]`` and run ``x @ w_t``
  (the stock BLAS): the product then reads the weight along its outputs, which streams it from
  memory faster than the ``[out, in]`` dot-product form. Measured at 1 thread with the weights
  cold (400 MB cycled), GB/s of weight read, ``F.linear`` -> transposed copy: 768 x 2304
  12.8 -> 16.2, 768 x 2048 12.5 -> 17.1, 768 x 768 12.4 -> 13.8, 768 x 16384 13.0 -> 21.4 (a
  plain read of the same bytes: 18.7-22.6), but 2048 x 768 15.7 -> 13.9, so narrow weights keep
  ``F.linear``. A whole GPT-B batch-1 cached step: 31.8 ms against 39.9 ms with ``F.linear``.
  The copy costs the weight's memory once more and follows the weight as the packed one does;
* otherwise (other row counts, or the functional :func:`linear`) oneDNN on the plain weight,
  except where the stock BLAS is faster: ``STOCK_ROWS``, i.e. 1 row (any width; with the
  transposed copy above on ``Linear`` modules with out >= in features), and 12..48 rows
  with fewer than ``STOCK_MAX_OUT`` (8192) output features. A GPT-B batch-1 step is 41-47 ms
  with ``F.linear`` against 44-52 ms with plain oneDNN (weights streaming from memory; the
  16384-wide head included); at 2 rows plain oneDNN is 1.6-1.7x faster than ``F.linear``; at
  12..48 rows unpacked oneDNN is 0.6-1.07x of ``F.linear``; from 64 rows up and at the
  16384-wide head at 2+ rows oneDNN is 1.1-1.5x faster.

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
    "packed_bf16_linear_works",
    "cpu_linear_backend",
    "cpu_linear_backend_as",
    "linear",
    "set_cpu_linear_backend",
]

_BACKENDS = ("onednn", "aten")
# rows where F.linear wins: 1 row at any width, 12..48 rows with fewer than STOCK_MAX_OUT outputs
STOCK_ROWS = frozenset({1, *range(12, 49)})
STOCK_MAX_OUT = 8192
PACKED_ROWS = range(3, 129)  # Linear modules at these many rows: oneDNN on a pre-packed weight
PACK_ROWS_HINT = 16  # the row count oneDNN is told to pack for (any row count runs on it)
_onednn_ok: bool | None = None  # the probe's verdict, computed once
_packed_ok: bool | None = None  # the same for the pre-packed weight route
_packed_bf16_ok: bool | None = None  # and for its bf16 version (CPU bf16 autocast)


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


def packed_bf16_linear_works() -> bool:
    """Whether the pre-packed bf16 route exists, the CPU runs bf16 GEMMs natively (oneDNN's own
    check) and a probe GEMM is within bf16 rounding of a float64 product (probed once)."""
    global _packed_bf16_ok
    if _packed_bf16_ok is None:
        _packed_bf16_ok = packed_linear_works() and _probe_packed(torch.bfloat16)
    return _packed_bf16_ok


def _probe_packed(dtype: torch.dtype = torch.float32) -> bool:
    if not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    x, w, b, ref, bound = _probe_data()
    if dtype == torch.bfloat16:
        # inputs, weight and output rounded to bf16 (2**-9 each), fp32 accumulation
        bound = 3 * 2.0**-8 * (x.abs().double() @ w.abs().double().T + b.abs().double())
    rows = (1, 16, 67)
    try:
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), PACK_ROWS_HINT)
            outs = [torch.ops.mkldnn._linear_pointwise(x[:m].to(dtype), packed, b.to(dtype),
                                                       "none", [], "").float()
                    for m in rows]
            # the fused exact-GELU post-op of the bf16 route (Linear.forward_gelu)
            gelu = torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, b.to(dtype), "gelu",
                                                      [], "none").float()
    except Exception:  # the op exists but does not run here
        return False
    gelu_ref = F.gelu(ref)  # GELU's slope is at most 1.13: the GEMM bound carries over
    ok_gelu = _within_rounding([gelu], gelu_ref, 1.2 * bound + 2.0**-8 * gelu_ref.abs())
    return ok_gelu and all(_within_rounding([o], ref[:m], bound[:m]) for o, m in zip(outs, rows))


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
    rows = x.numel() // x.shape[-1]
    return not (rows in STOCK_ROWS and (rows == 1 or weight.shape[0] < STOCK_MAX_OUT))


def _stock_fast(x: torch.Tensor) -> bool:
    """True where every route of ``Linear`` would end in ``F.linear`` anyway, decided by the few
    cheapest checks (the per-call dispatch cost shows at 1 row: 61 linears per GPT-B step): the
    backend is off, ``x`` is not on the CPU, a ``jit.trace`` runs, or a 1-row fp32 input outside
    autocast."""
    if _backend != "onednn" or x.device.type != "cpu" or torch.jit.is_tracing():
        return True
    return (x.dtype == torch.float32 and x.dim() >= 2 and x.numel() == x.shape[-1]
            and not torch.is_autocast_enabled("cpu"))


def _transpose(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()  # [in, out]


def _use_transposed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a ``Linear`` module runs this 1-row input on its ``[in, out]`` weight copy: CPU
    fp32 inference (``_stock_fast`` already held) with at least as many outputs as inputs."""
    if _backend != "onednn" or x.device.type != "cpu" or torch.jit.is_tracing():
        return False
    return (weight.shape[0] >= weight.shape[1] and x.dtype == torch.float32
            and x.numel() == x.shape[-1] > 0 and x.dim() >= 2 and weight.dtype == torch.float32
            and weight.device.type == "cpu"
            and (bias is None or bias.dtype == torch.float32)
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad))))


def _use_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a ``Linear`` module takes oneDNN on its pre-packed fp32 weight for this input."""
    return (_onednn_applies(x, weight, bias) and x.numel() // x.shape[-1] in PACKED_ROWS
            and packed_linear_works())


def _use_packed_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a ``Linear`` module under CPU bf16 autocast takes oneDNN on a pre-packed bf16 copy
    of its fp32 weight (the GEMM autocast would run, without casting the weight on every call),
    or, outside autocast, a bf16 module on bf16 inputs the same GEMM on a packed copy of its bf16
    weight (``F.linear``'s oneDNN bf16 GEMM, 5-11% slower unpacked at FlexTok's 1024 rows)."""
    if _backend != "onednn" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if x.device.type != "cpu" or x.dim() < 2 or x.numel() == 0:
        return False
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return False
        if x.dtype not in (torch.float32, torch.bfloat16) or weight.dtype != torch.float32:
            return False
    elif x.dtype != torch.bfloat16 or weight.dtype != torch.bfloat16:
        return False
    if not weight.is_contiguous() or (bias is not None and bias.dtype != weight.dtype):
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    return packed_bf16_linear_works()


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
    CPU inference, oneDNN on a pre-packed copy of the weight: fp32 on ``PACKED_ROWS`` rows, and
    bf16 under CPU bf16 autocast or for bf16 weights and inputs (module docstring)."""

    _packed: dict | None = None  # dtype | "transposed" -> (weight, (ptr, version), copy), on use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if _stock_fast(x):  # cheapest checks first: a 1-row fp32 GEMV or a non-CPU call
            if _use_transposed(x, w, b):  # a wide 1-row GEMV: read the weight along its outputs
                wt, x1 = self._weight_copy("transposed", _transpose), x.reshape(1, -1)
                y = torch.mm(x1, wt) if b is None else torch.addmm(b, x1, wt)
                return y.view(*x.shape[:-1], w.shape[0])
            return F.linear(x, w, b)
        if _use_packed(x, w, b):
            return torch.ops.mkldnn._linear_pointwise(
                x, self._packed_weight(torch.float32), b, "none", [], ""
            )
        if _use_packed_bf16(x, w, b):  # what autocast's F.linear computes, minus the weight cast
            bf16 = torch.bfloat16
            return torch.ops.mkldnn._linear_pointwise(
                x.to(bf16), self._packed_weight(bf16), None if b is None else b.to(bf16),
                "none", [], "",
            )
        return linear(x, w, b)

    def fuses_gelu(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward_gelu` fuses the GELU into the GEMM for this input (the bf16
        autocast route; elsewhere it is ``gelu(self(x))`` unfused)."""
        return _use_packed_bf16(x, self.weight, self.bias)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu(self(x))`` with the exact (erf) GELU. On the bf16 autocast route the GELU is
        oneDNN's erf post-op applied to the fp32 accumulator before the bf16 output rounding,
        which saves a pass over the (wide) hidden activations."""
        b = self.bias
        if not _use_packed_bf16(x, self.weight, b):
            return F.gelu(self(x))
        bf16 = torch.bfloat16
        return torch.ops.mkldnn._linear_pointwise(
            x.to(bf16), self._packed_weight(bf16), None if b is None else b.to(bf16),
            "gelu", [], "none",
        )

    def _packed_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return self._weight_copy(
            dtype,
            lambda w: torch.ops.mkldnn._reorder_linear_weight(w.to(dtype), PACK_ROWS_HINT),
        )

    def _weight_copy(self, name, make) -> torch.Tensor:
        """The copy ``make(weight.detach())`` kept under ``name``, remade when the weight
        changes (module docstring)."""
        w = self.weight
        key = (w.data_ptr(), w._version)
        packed = self._packed if self._packed is not None else {}
        cached = packed.get(name)
        if cached is None or cached[0] is not w or cached[1] != key:
            packed.pop(name, None)  # free the stale copy before making the new one
            cached = (w, key, make(w.detach()))
            packed[name] = cached
            self._packed = packed
        return cached[2]

    def _apply(self, fn, recurse: bool = True):
        self._packed = None  # new parameter tensors (device, dtype): the copies are stale
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()  # deepcopy / pickle: oneDNN tensors have no storage
        state.pop("_packed", None)
        return state
