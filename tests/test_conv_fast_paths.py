"""The inference fast paths of ``visualtok.nn.conv`` (``upsample_conv``, ``group_norm_silu``,
``conv_add``) against float64 references of the plain ops: within fp32 rounding, never further
from float64 than the plain fp32 ops are (NCHW, the official layout), on both memory layouts; and
the plain route wherever autograd is on."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visualtok.image.maskgit_vqgan import MaskGITPixelDecoder, MaskGITResBlock
from visualtok.nn import conv as conv_module
from visualtok.nn.conv import conv_add, group_norm, group_norm_silu, upsample_conv

LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max())


def _conv(c_in: int, c_out: int, k: int = 3, bias: bool = True, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
    with torch.no_grad():
        conv.weight.normal_(0, (2 / (k * k * c_in)) ** 0.5)
        if bias:
            conv.bias.normal_()
    return conv


def _plain_upsample(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_upsample_conv_within_fp32_rounding_of_float64(fmt, bias):
    conv = _conv(64, 48, bias=bias).to(memory_format=fmt)
    x = torch.randn(2, 64, 9, 13).contiguous(memory_format=fmt)
    conv64 = _conv(64, 48, bias=bias).double()
    with torch.no_grad():
        ref = _plain_upsample(conv64, x.double())
        plain = _plain_upsample(conv.to(memory_format=torch.contiguous_format), x.contiguous())
        conv.to(memory_format=fmt)
        fused = upsample_conv(conv, x)
    assert fused.shape == (2, 48, 18, 26) and fused.is_contiguous(memory_format=fmt)
    assert _err(fused, ref) <= 2 * _err(plain, ref) + 1e-6
    torch.testing.assert_close(fused, plain)  # fp32 default tolerance (rtol 1.3e-6, atol 1e-5)


def test_upsample_conv_recomputes_after_weight_change_and_keeps_grad_route():
    conv = _conv(32, 32)
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        upsample_conv(conv, x)  # fills the phase cache
        conv.weight.mul_(-0.5)  # in place: version bump
        conv.bias.add_(1.0)
        torch.testing.assert_close(upsample_conv(conv, x), _plain_upsample(conv, x))
    conv.load_state_dict(_conv(32, 32, seed=1).state_dict())  # copy_ into the parameters
    with torch.no_grad():
        torch.testing.assert_close(upsample_conv(conv, x), _plain_upsample(conv, x))
    # autograd on: the plain route itself, bit for bit, and gradients flow
    y = upsample_conv(conv, x.requires_grad_())
    assert torch.equal(y, _plain_upsample(conv, x))
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


@pytest.mark.parametrize("channels", [32, 128])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("chunk", [None, 1000])  # 1000: many row chunks, a partial last one
def test_group_norm_silu_within_fp32_rounding_of_float64(channels, inplace, chunk, monkeypatch):
    """Large per-channel offsets against a small spread: where E[x^2] - E[x]^2 cancels."""
    if chunk is not None:
        monkeypatch.setattr(conv_module, "_CHUNK", chunk)
    torch.manual_seed(0)
    norm = group_norm(channels)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, channels, 40, 24) * 0.5 + torch.randn(1, channels, 1, 1) * 50
    with torch.no_grad():
        ref = F.silu(F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), 1e-6))
        plain = F.silu(F.group_norm(x, 32, norm.weight, norm.bias, 1e-6))  # NCHW: exact kernel
        xc = x.contiguous(memory_format=torch.channels_last)
        inp = xc.clone(memory_format=torch.channels_last)
        fast = group_norm_silu(norm, inp, inplace=inplace)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert (fast.data_ptr() == inp.data_ptr()) == inplace
    if not inplace:
        assert torch.equal(inp, xc)  # the input is untouched
    assert _err(fast, ref) <= 2 * _err(plain, ref) + 1e-6


def test_group_norm_silu_elsewhere_is_norm_then_silu():
    norm = group_norm(64)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(group_norm_silu(norm, x), F.silu(norm(x)))  # NCHW
    y = group_norm_silu(norm, x.contiguous(memory_format=torch.channels_last).requires_grad_())
    assert y.requires_grad  # autograd: the module and F.silu


@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("k", [1, 3])
def test_conv_add_is_residual_plus_conv(fmt, k):
    conv = _conv(32, 64, k=k).to(memory_format=fmt)
    x = torch.randn(2, 32, 10, 7).contiguous(memory_format=fmt)
    res = torch.randn(2, 64, 10, 7).contiguous(memory_format=fmt)
    with torch.no_grad():
        expected = res + conv(x)
        torch.testing.assert_close(conv_add(conv, x, res), expected, rtol=0, atol=1e-6)
        buf = res.clone(memory_format=fmt)
        out = conv_add(conv, x, buf, inplace=True)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        assert out.data_ptr() == buf.data_ptr()
    with pytest.raises(RuntimeError):  # a residual of the wrong shape is not silently broadcast
        with torch.no_grad():
            conv_add(conv, x, res[:, :1, :1, :1].expand(2, 64, 3, 3).contiguous())


def test_maskgit_decoder_fast_path_within_fp32_rounding_of_float64():
    """The whole pixel decoder (every fast path) against a float64 copy run on the plain ops."""
    torch.manual_seed(0)
    dec = MaskGITPixelDecoder(z_channels=16, hidden_channels=32, channel_mult=(1, 2, 2),
                              num_res_blocks=2).eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial norm affines
    z = torch.randn(2, 16, 6, 5)
    dec64 = MaskGITPixelDecoder(z_channels=16, hidden_channels=32, channel_mult=(1, 2, 2),
                                num_res_blocks=2).double().eval()
    dec64.load_state_dict(dec.state_dict())
    ref = dec64(z.double()).detach()  # autograd on: plain ops, float64
    plain = dec(z).detach()  # autograd on: plain ops, fp32
    z_in = z.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = dec(z_in)
    assert fast.shape == (2, 3, 24, 20)
    assert torch.equal(z_in, z)  # the caller's latent is never written
    assert _err(fast, ref) <= 2 * _err(plain, ref) + 1e-6


def test_maskgit_block_writes_its_input_only_when_asked():
    block = MaskGITResBlock(32, 32).eval()
    x = torch.randn(1, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    keep = x.clone()
    with torch.no_grad():
        y = block(x)
        assert torch.equal(x, keep) and y.data_ptr() != x.data_ptr()
        y2 = block(x, inplace=True)
    assert y2.data_ptr() == x.data_ptr()
    torch.testing.assert_close(y2, y, rtol=0, atol=1e-6)


def test_upsample_conv_under_bf16_autocast_is_as_close_as_the_plain_route():
    conv = _conv(64, 64).to(memory_format=torch.channels_last)
    x = torch.randn(1, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = _plain_upsample(_conv(64, 64).double(), x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = _plain_upsample(conv, x)
            fused = upsample_conv(conv, x)
    assert fused.dtype == plain.dtype == torch.bfloat16
    assert _err(fused, ref) <= 2 * _err(plain, ref)
