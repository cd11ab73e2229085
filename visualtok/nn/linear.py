"""The one linear layer of visualtok: CPU fp32 inference may run through oneDNN (or, for 1-row
GEMVs, numpy's OpenBLAS), everything else runs through ``F.linear``.

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
* ``Linear`` modules on 1 row (a GEMV, e.g. a GPT decode step at batch 1) keep a copy of the
  weight transposed to ``[in, out]`` in transparent huge pages (:func:`hugepage_copy`) and run
  ``x @ w_t`` on it. A GEMV is bound by streaming its weight from memory, and both choices make
  that stream faster: reading along the outputs (768 x 2304, 1 thread, weights cold, GB/s of
  weight read: ``F.linear`` 12.8 -> ``[in, out]`` 16.2) and 2 MiB pages (16.2 -> 21-22; a plain
  ``Tensor.sum`` of the same bytes: 17-19 in 4 KiB pages, 31-34 in huge pages). On x86 CPUs
  other than Intel's, and where numpy links OpenBLAS (the PyPI wheels), the product runs in
  numpy's OpenBLAS on PyTorch's thread count (:func:`openblas_gemv_works`): MKL takes a slower
  kernel there (AMD EPYC, huge pages, OpenBLAS against MKL: 768 x 2304 24.3 against 21.0 GB/s,
  768 x 768 19.9 / 15.3, 2048 x 768 18.4 / 15.4, 768 x 16384 26.9 / 24.4). A whole GPT-B
  batch-1 generate step: 22.4 ms against 24.6 ms with MKL on the same copies and 35 ms for
  LlamaGen's own code (RESULTS.md). Elsewhere the copy runs through PyTorch's BLAS, and a weight
  with fewer outputs than inputs keeps ``[out, in]`` (a huge-page copy for ``F.linear``, where
  the ``[in, out]`` form streams slower: 2048 x 768 15.7 -> 13.9). The copy costs the weight's
  memory once more and follows the weight as the packed one does;
* otherwise (other row counts, or the functional :func:`linear`) oneDNN on the plain weight,
  except where the stock BLAS is faster: ``STOCK_ROWS``, i.e. 1 row (any width; the weight
  copies above on ``Linear`` modules), and 12..48 rows
  with fewer than ``STOCK_MAX_OUT`` (8192) output features. A GPT-B batch-1 step is 41-47 ms
  with ``F.linear`` against 44-52 ms with plain oneDNN (weights streaming from memory; the
  16384-wide head included); at 2 rows plain oneDNN is 1.6-1.7x faster than ``F.linear``; at
  12..48 rows unpacked oneDNN is 0.6-1.07x of ``F.linear``; from 64 rows up and at the
  16384-wide head at 2+ rows oneDNN is 1.1-1.5x faster.

``set_cpu_linear_backend("aten")`` (or ``VISUALTOK_CPU_LINEAR=aten``) turns all of it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
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
    "hugepage_copy",
    "hugepages_available",
    "linear",
    "openblas_gemv_works",
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
_hugepages_ok: bool | None = None  # whether transparent huge pages can be advised here
_openblas: tuple | None | bool = None  # numpy's OpenBLAS (get, set) thread count; False = not used


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


def _call_kind(x: torch.Tensor) -> str:
    """How ``Linear.forward`` dispatches ``x``, by the cheapest checks first (the per-call cost
    shows at 1 row: 61 linears per GPT-B step): ``"stock"`` (``F.linear``: the backend is off,
    ``x`` is not on the CPU, or a ``jit.trace`` runs), ``"gemv"`` (a 1-row fp32 input outside
    autocast: :func:`_gemv_route`) or ``"gemm"`` (the multi-row routes)."""
    if _backend != "onednn" or x.device.type != "cpu" or _tracing():
        return "stock"
    if (x.dtype == torch.float32 and x.dim() >= 2 and x.numel() == x.shape[-1] > 0
            and not torch.is_autocast_enabled("cpu")):
        return "gemv"
    return "gemm"


def _tracing() -> bool:
    return torch._C._get_tracing_state() is not None  # torch.jit.is_tracing() without its wrapper


def hugepages_available() -> bool:
    """Whether anonymous memory can be advised into transparent 2 MiB pages here (Linux with THP
    not ``never``); probed once."""
    global _hugepages_ok
    if _hugepages_ok is None:
        try:
            with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                mode = f.read()
            _hugepages_ok = hasattr(mmap, "MADV_HUGEPAGE") and "[never]" not in mode
        except OSError:
            _hugepages_ok = False
    return _hugepages_ok


def hugepage_copy(src: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy of ``src`` in memory advised into transparent huge pages.

    Why: a GEMV reads each weight once per call from DRAM, and the hardware prefetchers stop at
    every 4 KiB page boundary; in 2 MiB pages a one-thread weight read streams faster
    (``Tensor.sum`` 17-19 -> 24-32 GB/s, the ``[in, out]`` GEMV 14-20 -> 17-25 GB/s at GPT-B's
    shapes, 1 thread, weights cold). PyTorch's allocator advises huge pages only under
    ``THP_MEM_ALLOC_ENABLE=1``, read once when the process starts, so the GEMV weight copies of
    ``Linear`` get their own mapping (2 MiB aligned, unmapped with the tensor). Elsewhere, or
    when advising fails: a plain copy.
    """
    if not hugepages_available() or src.device.type != "cpu" or src.numel() == 0:
        return src.contiguous().clone()
    page = 2 << 20
    nbytes = src.numel() * src.element_size()
    buf = mmap.mmap(-1, nbytes + page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        buf.close()
        return src.contiguous().clone()
    # the first 2 MiB boundary inside the mapping: only whole aligned 2 MiB ranges get huge pages
    offset = -ctypes.addressof(ctypes.c_char.from_buffer(buf)) % page
    flat = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset)  # keeps buf
    out = flat.view(src.dtype).view(src.shape)
    out.copy_(src)
    return out


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def openblas_gemv_works() -> bool:
    """Whether 1-row GEMVs take numpy's OpenBLAS here (probed once): an x86 CPU that is not
    Intel's (where MKL, PyTorch's BLAS, may take its AVX2 path; module docstring), numpy linked
    against OpenBLAS with its thread count controllable through ``threadpoolctl``, and a probe
    GEMV within fp32 rounding of a float64 product."""
    global _openblas
    if _openblas is None:
        _openblas = _probe_openblas() or False
    return _openblas is not False


def _probe_openblas() -> tuple | None:
    """``(get_num_threads, set_num_threads)`` of numpy's OpenBLAS if the route applies."""
    if platform.machine().lower() not in ("x86_64", "amd64") or _cpu_vendor() == "GenuineIntel":
        return None
    try:
        import numpy as np
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    np_root = os.path.realpath(os.path.dirname(os.path.dirname(np.__file__)))
    libs = [c.filepath for c in ThreadpoolController().select(internal_api="openblas")
            .lib_controllers if os.path.realpath(c.filepath).startswith(np_root)
            and "numpy" in os.path.basename(os.path.dirname(c.filepath))]
    if len(libs) != 1:
        return None
    threads = _openblas_thread_functions(libs[0])
    if threads is None:
        return None
    x, w, b, ref, bound = _probe_data()
    try:
        wt = w.t().contiguous().numpy()
        outs = [torch.from_numpy(x[:1].numpy() @ wt) + b, torch.from_numpy(x.numpy() @ wt) + b]
    except Exception:  # numpy's matmul does not run here
        return None
    ok = _within_rounding(outs[:1], ref[:1], bound[:1]) and _within_rounding(outs[1:], ref, bound)
    return threads if ok else None


def _openblas_thread_functions(path: str) -> tuple | None:
    """The thread-count getter and setter of the OpenBLAS at ``path`` (already loaded by numpy;
    the symbol names carry a build-specific prefix and suffix)."""
    lib = ctypes.CDLL(path)
    for prefix in ("scipy_", ""):
        for suffix in ("64_", ""):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, put.restype, put.argtypes = ctypes.c_int, None, [ctypes.c_int]
                return get, put
    return None


def _openblas_gemv(x: torch.Tensor, wt, bias: torch.Tensor | None) -> torch.Tensor:
    """``x [..., 1, in] @ wt [in, out] (+ bias)`` by numpy's OpenBLAS, on as many threads as
    PyTorch uses (restored afterwards, so numpy elsewhere in the process keeps its own setting);
    the result is ``[..., 1, out]`` in numpy's memory, with no copy either way."""
    get_threads, set_threads = _openblas
    if x.requires_grad or x.is_neg() or x.stride(-1) != 1:  # what .numpy() cannot take as is
        x = x.detach().resolve_neg().contiguous()
    n = torch.get_num_threads()
    before = get_threads()
    if before != n:
        set_threads(n)
    try:
        y = torch.from_numpy(x.numpy() @ wt)
    finally:
        if before != n:
            set_threads(before)
    return y if bias is None else y.add_(bias)


def _transposed_copy(w: torch.Tensor) -> torch.Tensor:
    return hugepage_copy(w.t())  # [in, out]


def _transposed_array(w: torch.Tensor):
    return _transposed_copy(w).numpy()  # numpy keeps the tensor (and its mapping) alive


def _gemv_route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """The weight copy a ``Linear`` module runs a 1-row input on (``_call_kind(x) == "gemv"``:
    the checks on ``x`` are done): ``"openblas"`` (an ``[in, out]`` copy through numpy's
    OpenBLAS, where :func:`openblas_gemv_works`), else ``"transposed"`` (the ``[in, out]`` copy
    through PyTorch's BLAS) with at least as many outputs as inputs, ``"plain"`` (``[out, in]``
    on huge pages, for ``F.linear``) with fewer where huge pages exist, else ``None``
    (``F.linear`` on the weight itself). ``None`` also for autograd, tracing by
    ``torch.compile``, weights or biases that are not CPU fp32, and a width mismatch."""
    if _backend != "onednn" or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    if x.shape[-1] != weight.shape[1]:  # F.linear reports the mismatch in its own words
        return None
    if bias is not None and bias.dtype != torch.float32:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return None
    if torch.compiler.is_compiling():
        return None
    if openblas_gemv_works():
        return "openblas"
    if weight.shape[0] >= weight.shape[1]:
        return "transposed"
    return "plain" if hugepages_available() else None


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
        kind = _call_kind(x)
        if kind == "gemv":
            route = _gemv_route(x, w, b)
            if route == "openblas":  # the [in, out] copy seen as a numpy array (same memory)
                return _openblas_gemv(x, self._weight_copy(route, _transposed_array), b)
            if route == "transposed":  # read the weight along its outputs
                wt, x1 = self._weight_copy(route, _transposed_copy), x.reshape(1, -1)
                y = torch.mm(x1, wt) if b is None else torch.addmm(b, x1, wt)
                return y.view(*x.shape[:-1], w.shape[0])
            if route == "plain":
                return F.linear(x, self._weight_copy(route, hugepage_copy), b)
        if kind != "gemm":
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
