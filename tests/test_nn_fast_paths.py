"""The CPU inference fast paths: oneDNN linears (``visualtok.nn.linear``) and the channels-last
MaskGIT pixel decoder. Both must be drop-in: same numbers (to float rounding), same state dicts,
same gradients, and the stock path wherever the fast one does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visualtok import create_model
from visualtok.image.maskgit_vqgan import MaskGITPixelDecoder
from visualtok.nn import linear as linear_mod
from visualtok.nn.linear import (
    Linear,
    cpu_linear_backend,
    cpu_linear_backend_as,
    linear,
    set_cpu_linear_backend,
)

needs_onednn = pytest.mark.skipif(
    cpu_linear_backend() != "onednn", reason="oneDNN linear backend not selected on this machine"
)


@needs_onednn
@pytest.mark.parametrize("shape", [(70, 48), (3, 25, 48), (2, 3, 12, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_stock(shape, bias):
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(40, 48)
    b = torch.randn(40) if bias else None
    with torch.no_grad():
        assert linear_mod._use_onednn(x, w, b)
        out = linear(x, w, b)
        ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    assert out.shape == (*shape[:-1], 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # non-contiguous input (a transposed view) gives the same result
    xt = x.transpose(0, -2) if x.dim() > 2 else x
    with torch.no_grad():
        torch.testing.assert_close(linear(xt, w, b), F.linear(xt, w, b), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_small_gemm_window_takes_the_stock_path():
    """1 row (a batch-1 decode step, any width) and 12..48 rows with fewer than STOCK_MAX_OUT
    outputs (a batch-16 step's qkv/MLP through the functional linear) take F.linear; 2..11 rows,
    more rows, or a wide head at 2+ rows take oneDNN."""
    w, wide = torch.randn(40, 48), torch.randn(linear_mod.STOCK_MAX_OUT, 48)
    with torch.no_grad():
        for rows in (1, 12, 16, 48):
            assert rows in linear_mod.STOCK_ROWS
            assert not linear_mod._use_onednn(torch.randn(rows, 48), w, None)
        assert not linear_mod._use_onednn(torch.randn(16, 1, 48), w, None)
        for rows in (2, 11, 49, 256):
            assert linear_mod._use_onednn(torch.randn(rows, 48), w, None)
        assert not linear_mod._use_onednn(torch.randn(1, 48), wide, None)
        for rows in (2, 16):
            assert linear_mod._use_onednn(torch.randn(rows, 48), wide, None)


def test_stock_path_where_onednn_does_not_apply():
    x, w = torch.randn(64, 8), torch.randn(6, 8)
    lin = Linear(8, 6)
    assert not linear_mod._use_onednn(x.bfloat16(), w.bfloat16(), None)  # not fp32
    assert not linear_mod._use_onednn(x, w.t().contiguous().t(), None)  # weight not contiguous
    assert not linear_mod._use_onednn(x[:0], w, None)  # empty
    assert not linear_mod._use_onednn(x, lin.weight, lin.bias)  # autograd graph being built
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear_mod._use_onednn(x, w, None)
        assert lin(x).dtype == torch.bfloat16  # autocast still runs its bf16 GEMM
    with cpu_linear_backend_as("aten"), torch.no_grad():
        assert not linear_mod._use_onednn(x, w, None)


def test_linear_module_is_nn_linear_with_same_gradients():
    torch.manual_seed(0)
    ours, ref = Linear(12, 5), nn.Linear(12, 5)
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Linear) and list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 12)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert torch.equal(ours.weight.grad, ref.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_backend_selection_errors_and_restore(monkeypatch):
    before = cpu_linear_backend()
    with pytest.raises(ValueError, match="must be one of"):
        set_cpu_linear_backend("mkl")
    with cpu_linear_backend_as("aten"):
        assert cpu_linear_backend() == "aten"
    assert cpu_linear_backend() == before
    monkeypatch.setenv("VISUALTOK_CPU_LINEAR", "fast")
    with pytest.raises(ValueError, match="VISUALTOK_CPU_LINEAR"):
        linear_mod._default_backend()
    monkeypatch.setenv("VISUALTOK_CPU_LINEAR", "aten")
    assert linear_mod._default_backend() == "aten"


def test_model_outputs_equal_on_both_backends():
    """A whole TiTok encode/decode gives the same codes and (to rounding) pixels either way."""
    torch.manual_seed(0)
    model = create_model("titok_tiny").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        codes, pixels = model.encode(x), model.decode(model.encode(x))
        with cpu_linear_backend_as("aten"):
            codes_ref, pixels_ref = model.encode(x), model.decode(codes)
    assert torch.equal(codes, codes_ref)
    torch.testing.assert_close(pixels, pixels_ref, rtol=0, atol=1e-5)


def test_pixel_decoder_channels_last_is_exact_and_round_trips(tmp_path):
    torch.manual_seed(0)
    dec = MaskGITPixelDecoder(z_channels=16, hidden_channels=32, channel_mult=(1, 2, 4),
                              num_res_blocks=1).eval()
    assert dec.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    ref = MaskGITPixelDecoder(16, 32, (1, 2, 4), 1).eval().to(memory_format=torch.contiguous_format)
    ref.load_state_dict(dec.state_dict())
    assert ref.conv_in.weight.is_contiguous()
    z = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        out = dec(z)
        # the NCHW computation of the same weights, op by op
        x = ref.conv_in(z)
        for block in ref.mid:
            x = block(x)
        for block in reversed(ref.up):
            x = block(x)
        expected = ref.conv_out(F.silu(ref.norm_out(x)))
    assert out.shape == (2, 3, 16, 16) and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # state dicts save as plain contiguous tensors and load back into the NHWC parameters
    path = tmp_path / "dec.pt"
    torch.save({k: v.contiguous() for k, v in dec.state_dict().items()}, path)
    again = MaskGITPixelDecoder(16, 32, (1, 2, 4), 1).eval()
    again.load_state_dict(torch.load(path, weights_only=True))
    assert again.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(again(z), out)


def test_traced_and_exported_graphs_use_the_portable_op():
    """``torch.jit.trace``/``torch.export`` must record ``aten::linear``, never the oneDNN op."""
    lin = Linear(8, 4).eval()
    x = torch.randn(3, 8)
    traced = torch.jit.trace(lin, x, check_trace=False)
    assert "mkldnn" not in str(traced.inlined_graph) and "linear" in str(traced.inlined_graph)
    exported = torch.export.export(lin, (x,))
    assert "mkldnn" not in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), lin(x))


@pytest.mark.parametrize("route", ["onednn", "aten"])
def test_both_routes_within_fp32_rounding_of_float64(route):
    if route == "onednn" and not linear_mod.onednn_linear_works():
        pytest.skip("oneDNN linear op unavailable in this build")
    torch.manual_seed(1)
    x, w, b = torch.randn(5, 33, 257), torch.randn(300, 257), torch.randn(300)
    with cpu_linear_backend_as(route), torch.no_grad():
        assert linear_mod._use_onednn(x, w, b) == (route == "onednn")
        out = linear(x, w, b)
    ref = x.double() @ w.double().T + b.double()
    bound = 257 * 2.0**-24 * (x.abs().double() @ w.abs().double().T + b.abs().double())
    assert bool(((out.double() - ref).abs() <= bound).all())


needs_packed = pytest.mark.skipif(
    cpu_linear_backend() != "onednn" or not linear_mod.packed_linear_works(),
    reason="oneDNN pre-packed linear route unavailable on this machine",
)


def _fp32_bound_holds(out, x, w, b):
    ref = x.double() @ w.double().T + b.double()
    bound = x.shape[-1] * 2.0**-24 * (x.abs().double() @ w.abs().double().T + b.abs().double())
    return bool(((out.double() - ref).abs() <= bound).all())


@needs_packed
@pytest.mark.parametrize("rows", [3, 16, 128])
def test_packed_route_within_fp32_rounding_of_float64(rows):
    """Linear modules on PACKED_ROWS rows run on the pre-packed weight; same numbers."""
    torch.manual_seed(2)
    lin = Linear(257, 300).eval()
    x = torch.randn(rows, 257)
    with torch.no_grad():
        assert linear_mod._use_packed(x, lin.weight, lin.bias)
        out = lin(x)
        out3 = lin(x.view(1, rows, 257))
        assert lin._packed is not None  # the packed copy was made and kept
    assert _fp32_bound_holds(out, x, lin.weight, lin.bias)
    assert torch.equal(out3[0], out)
    with torch.no_grad():  # GEMV rows and more rows: the plain routes, not the packed one
        for other in (1, 2, 129):
            assert not linear_mod._use_packed(torch.randn(other, 257), lin.weight, lin.bias)


@needs_packed
def test_packed_copy_follows_the_weight():
    """The packed copy is remade after optimiser steps, load_state_dict and in-place writes, and
    never travels into deepcopy, pickle or a state dict."""
    import copy
    import pickle

    torch.manual_seed(3)
    lin = Linear(64, 48)
    x = torch.randn(4, 64)

    def check():
        with torch.no_grad():
            assert torch.allclose(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)

    check()
    lin(x).square().sum().backward()  # training: no packed copy used, one optimiser step
    torch.optim.SGD(lin.parameters(), lr=0.5).step()
    check()
    lin.load_state_dict({"weight": torch.randn(48, 64), "bias": torch.randn(48)})
    check()
    with torch.no_grad():
        lin.weight.mul_(-2.0)
    check()
    lin.weight = nn.Parameter(torch.randn(48, 64))
    check()
    assert list(lin.state_dict()) == ["weight", "bias"]
    for clone in (copy.deepcopy(lin), pickle.loads(pickle.dumps(lin))):
        assert clone._packed is None
        with torch.no_grad():
            assert torch.equal(clone(x), lin(x))
    lin.double()  # new parameter tensors: the copy is dropped, the plain route runs
    assert lin._packed is None
    with torch.no_grad():
        assert lin(x.double()).dtype == torch.float64


@pytest.mark.parametrize("failure", ["missing", "raises", "wrong"])
def test_onednn_probe_falls_back_to_stock(monkeypatch, failure):
    """A missing op, an op that raises, or one that gives wrong numbers: the probe says no and
    every call takes F.linear (with the right answer)."""
    class FakeOps:
        def __getattr__(self, name):
            if name != "_linear_pointwise" or failure == "missing":
                raise AttributeError(name)
            if failure == "raises":
                def op(*a):
                    raise RuntimeError("not supported on this CPU")
                return op
            return lambda x, w, b, *a: F.linear(x, w, b) + 1e-3  # off by more than rounding

    monkeypatch.setattr(torch.ops, "mkldnn", FakeOps())
    monkeypatch.setattr(linear_mod, "_onednn_ok", None)
    monkeypatch.setattr(linear_mod, "_backend", "onednn")
    assert not linear_mod.onednn_linear_works()
    assert cpu_linear_backend() == "aten"
    x, w = torch.randn(64, 8), torch.randn(6, 8)
    with torch.no_grad():
        assert not linear_mod._use_onednn(x, w, None)
        assert torch.equal(linear(x, w), F.linear(x, w))
    with pytest.raises(ValueError, match="self-check"):
        set_cpu_linear_backend("onednn")


@needs_onednn
def test_packed_probe_failure_falls_back_to_the_plain_route(monkeypatch):
    """A reorder op that raises: the packed route is off, modules take the plain rule."""
    real = torch.ops.mkldnn

    class FakeOps:
        def __getattr__(self, name):
            if name == "_reorder_linear_weight":
                def op(*a):
                    raise RuntimeError("no packed layout here")
                return op
            return getattr(real, name)

    monkeypatch.setattr(torch.ops, "mkldnn", FakeOps())
    monkeypatch.setattr(linear_mod, "_packed_ok", None)
    assert not linear_mod.packed_linear_works()
    lin = Linear(48, 40).eval()
    x = torch.randn(4, 48)
    with torch.no_grad():
        assert not linear_mod._use_packed(x, lin.weight, lin.bias)
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    assert lin._packed is None


@pytest.mark.skipif(
    cpu_linear_backend() != "onednn" or not linear_mod.packed_bf16_linear_works(),
    reason="oneDNN bf16 pre-packed route unavailable on this CPU",
)
@pytest.mark.parametrize("rows", [3, 300])
def test_bf16_autocast_route_matches_autocast_f_linear(rows):
    """Under CPU bf16 autocast a Linear module runs oneDNN's bf16 GEMM on a packed bf16 copy:
    bf16 output, within bf16 rounding of the float64 product and of autocast's own F.linear."""
    torch.manual_seed(4)
    lin = Linear(257, 300).eval()
    x = torch.randn(2, rows, 257)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear_mod._use_packed_bf16(x, lin.weight, lin.bias)
        out = lin(x)
        stock = F.linear(x, lin.weight, lin.bias)
    assert out.dtype == stock.dtype == torch.bfloat16 and lin._packed[torch.bfloat16] is not None
    ref = x.double() @ lin.weight.double().T + lin.bias.double()
    scale = x.abs().double() @ lin.weight.abs().double().T + lin.bias.abs().double()
    assert bool(((out.double() - ref).abs() <= 3 * 2.0**-8 * scale).all())
    assert bool(((out.double() - stock.double()).abs() <= 3 * 2.0**-8 * scale).all())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # GELU fused as post-op
        assert lin.fuses_gelu(x)
        fused = lin.forward_gelu(x)
    assert fused.dtype == torch.bfloat16
    gelu_ref = F.gelu(ref)
    bound = 1.2 * 3 * 2.0**-8 * scale + 2.0**-8 * gelu_ref.abs()
    assert bool(((fused.double() - gelu_ref).abs() <= bound).all())
    with torch.no_grad():  # outside autocast: the fp32 routes again, GELU unfused
        assert not linear_mod._use_packed_bf16(x, lin.weight, lin.bias) and not lin.fuses_gelu(x)
        assert lin(x).dtype == torch.float32
        assert torch.equal(lin.forward_gelu(x), F.gelu(lin(x)))
    # a bf16 module on bf16 inputs: the same GEMM on a packed copy of its bf16 weight
    lin_bf, xb = copy.deepcopy(lin).bfloat16(), x.bfloat16()
    with torch.no_grad():
        assert linear_mod._use_packed_bf16(xb, lin_bf.weight, lin_bf.bias)
        out_bf, stock_bf = lin_bf(xb), F.linear(xb, lin_bf.weight, lin_bf.bias)
        assert not linear_mod._use_packed_bf16(x, lin_bf.weight, lin_bf.bias)  # fp32 input
    assert out_bf.dtype == torch.bfloat16 and lin_bf._packed[torch.bfloat16] is not None
    ref_bf = xb.double() @ lin_bf.weight.double().T + lin_bf.bias.double()
    assert bool(((out_bf.double() - ref_bf).abs() <= 2 * 2.0**-8 * scale).all())
    assert bool(((out_bf.double() - stock_bf.double()).abs() <= 2 * 2.0**-8 * scale).all())


def _force_gemv_route(monkeypatch, route):
    """Make ``_gemv_route`` pick ``route`` where it applies (skip where this machine lacks it)."""
    if route == "openblas" and not linear_mod.openblas_gemv_works():
        pytest.skip("numpy's OpenBLAS route does not apply on this machine")
    if route == "plain" and not linear_mod.hugepages_available():
        pytest.skip("no transparent huge pages here")
    if route != "openblas":
        monkeypatch.setattr(linear_mod, "_openblas", False)
    if route == "plain":  # narrow weights take it; make every weight narrow-looking
        real = linear_mod._gemv_route
        monkeypatch.setattr(linear_mod, "_gemv_route", lambda x, w, b: (
            "plain" if real(x, w, b) is not None else None))


@pytest.mark.skipif(cpu_linear_backend() != "onednn", reason="library CPU linear backend is off")
@pytest.mark.parametrize("route", ["openblas", "transposed", "plain"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("features", [(257, 300), (300, 257)])
def test_gemv_routes_within_fp32_rounding_of_float64(monkeypatch, route, bias, features):
    """1-row inputs (CPU fp32 inference) run on a weight copy of ``Linear``: numpy's OpenBLAS or
    PyTorch's BLAS on ``[in, out]``, or F.linear on a huge-page ``[out, in]`` copy; every route
    within fp32 rounding of a float64 product, any leading shape, the copy remade when the weight
    changes in place; autograd and the 'aten' backend take F.linear itself."""
    _force_gemv_route(monkeypatch, route)
    torch.manual_seed(4)
    n_in, n_out = features
    lin = Linear(n_in, n_out, bias=bias).eval()
    b = lin.bias if bias else torch.zeros(n_out)
    with torch.no_grad():
        for x in (torch.randn(1, n_in), torch.randn(1, 1, n_in), torch.randn(2, n_in)[1:],
                  torch.randn(n_in, 3)[:, 1][None]):  # the last one is strided
            assert linear_mod._call_kind(x) == "gemv"
            assert linear_mod._gemv_route(x, lin.weight, lin.bias) == (
                route if route != "transposed" or n_out >= n_in else
                ("plain" if linear_mod.hugepages_available() else None))
            out = lin(x)
            assert out.shape == (*x.shape[:-1], n_out) and out.dtype == torch.float32
            assert _fp32_bound_holds(out.reshape(1, n_out), x.reshape(1, n_in), lin.weight, b)
        assert lin._packed  # a copy was made and kept
        lin.weight.mul_(-1.0)  # in-place write: the copy is remade
        x = torch.randn(1, n_in)
        assert _fp32_bound_holds(lin(x), x, lin.weight, b)
        with cpu_linear_backend_as("aten"):
            assert linear_mod._call_kind(x) == "stock"
            assert linear_mod._gemv_route(x, lin.weight, lin.bias) is None
    x = torch.randn(1, n_in, requires_grad=True)
    assert linear_mod._gemv_route(x, lin.weight, lin.bias) is None
    lin(x).sum().backward()
    torch.testing.assert_close(x.grad[0], lin.weight.sum(0))


@pytest.mark.skipif(not linear_mod.openblas_gemv_works(), reason="no OpenBLAS GEMV route here")
def test_openblas_gemv_uses_torch_threads_and_restores_numpys():
    """The OpenBLAS GEMV runs on PyTorch's thread count and leaves numpy's own setting as it was
    (measured through the same OpenBLAS getter/setter)."""
    get_threads, set_threads = linear_mod._openblas
    seen = []
    lin = Linear(64, 96, bias=False).eval()
    x = torch.randn(1, 64)
    before_torch, before_blas = torch.get_num_threads(), get_threads()
    try:
        set_threads(2)
        torch.set_num_threads(1)
        real_from_numpy = torch.from_numpy

        def spy(a):
            seen.append(get_threads())
            return real_from_numpy(a)

        linear_mod.torch.from_numpy = spy
        try:
            with torch.no_grad():
                lin(x)
        finally:
            linear_mod.torch.from_numpy = real_from_numpy
        assert get_threads() == 2  # numpy's setting restored
    finally:
        torch.set_num_threads(before_torch)
        set_threads(before_blas)
    assert seen == [1]  # during the GEMV (the product is taken before from_numpy): torch's count


def test_openblas_probe_failure_falls_back(monkeypatch):
    """A numpy BLAS that disagrees with float64 (or is missing) is never used."""
    monkeypatch.setattr(linear_mod, "_openblas", None)
    monkeypatch.setattr(linear_mod, "_openblas_thread_functions", lambda path: None)
    assert not linear_mod.openblas_gemv_works()
    lin = Linear(32, 48).eval()
    x = torch.randn(1, 32)
    with torch.no_grad():
        assert linear_mod._gemv_route(x, lin.weight, lin.bias) != "openblas"
        assert _fp32_bound_holds(lin(x), x, lin.weight, lin.bias)


def test_hugepage_copy_is_an_exact_aligned_copy():
    """``hugepage_copy``: same values, shape and dtype, contiguous, its own memory; on Linux with
    transparent huge pages it starts at a 2 MiB boundary."""
    src = torch.randn(300, 257).t()  # non-contiguous source
    out = linear_mod.hugepage_copy(src)
    assert torch.equal(out, src) and out.is_contiguous() and out.dtype == src.dtype
    assert out.data_ptr() != src.data_ptr()
    if linear_mod.hugepages_available():
        assert out.data_ptr() % (2 << 20) == 0
    out.add_(1.0)
    assert torch.equal(out, src + 1.0)  # writable, and src untouched
    assert linear_mod.hugepage_copy(torch.empty(0, 3)).shape == (0, 3)
