"""The audio conv layers' inference fast paths give the plain ops' values bit for bit, and the
cached weight-norm kernel follows every change of its parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visualtok.audio.layers import Snake, WNConv1d, WNConvTranspose1d, pad1d


@pytest.mark.parametrize("left,right", [(0, 0), (2, 0), (0, 3), (3, 2), (6, 5)])
def test_pad1d_matches_reflect_pad(left, right):
    x = torch.randn(2, 3, 40)
    assert torch.equal(pad1d(x, left, right), F.pad(x, (left, right), "reflect"))
    xt = torch.randn(2, 40, 3).transpose(1, 2)  # a strided input
    assert torch.equal(pad1d(xt, left, right), F.pad(xt, (left, right), "reflect"))


def test_pad1d_short_signal_and_zero_mode():
    x = torch.randn(1, 2, 3)
    y = pad1d(x, 4, 4)  # shorter than the pad: zero-extended first (EnCodec's rule)
    ext = F.pad(F.pad(x, (0, 2)), (4, 4), "reflect")[..., :-2]
    assert torch.equal(y, ext)
    assert torch.equal(pad1d(x, 1, 2, "constant"), F.pad(x, (1, 2)))


def test_pad1d_keeps_gradients():
    x = torch.randn(1, 2, 10, requires_grad=True)
    pad1d(x, 2, 1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_weight_norm_kernel_cache_follows_the_parameters():
    conv = WNConv1d(4, 5, 3)
    x = torch.randn(1, 4, 9)
    with torch.no_grad():
        k1 = conv.kernel()
        assert conv.kernel() is k1  # computed once at inference
        assert torch.equal(k1, torch._weight_norm(conv.weight_v, conv.weight_g, 0))
        conv.weight_g.mul_(2.0)  # an in-place update (optimizer step, load_state_dict)
        k2 = conv.kernel()
        assert k2 is not k1 and torch.allclose(k2, 2 * k1)
        y_cached = conv(x)
    conv.load_state_dict({k: v * 0.5 for k, v in conv.state_dict().items()})
    with torch.no_grad():
        assert torch.allclose(conv.kernel(), k1)  # g and v both halved: the same direction
    y = conv(x)  # with autograd: recomputed, gradients reach g and v
    y.sum().backward()
    assert conv.weight_g.grad is not None and conv.weight_v.grad is not None
    assert not torch.equal(y.detach(), y_cached)
    tr = WNConvTranspose1d(4, 2, 4, 2)
    with torch.no_grad():
        assert tr.kernel() is tr.kernel()
        tr.double()
        assert tr.kernel().dtype == torch.float64  # .to() replaces the parameters


def test_snake_in_place_equals_the_formula():
    snake = Snake(6)
    with torch.no_grad():
        snake.alpha.copy_(torch.rand(1, 6, 1) + 0.2)
    x = torch.randn(2, 6, 50)
    a = snake.alpha
    ref = x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)
    with torch.no_grad():
        assert torch.equal(snake(x), ref)
    x.requires_grad_(True)
    snake(x).sum().backward()
    assert snake.alpha.grad is not None and x.grad is not None


@pytest.mark.parametrize("c_in,c_out,stride,padding", [(6, 3, 2, 0), (8, 4, 5, 3), (5, 7, 4, 2),
                                                       (3, 2, 1, 0)])
def test_overlap_add_transposed_conv_matches_the_conv(c_in, c_out, stride, padding):
    conv = WNConvTranspose1d(c_in, c_out, 2 * stride, stride, padding=padding)
    x = torch.randn(2, c_in, 17)
    with torch.no_grad():
        fast = conv(x)
        assert "_ola_cache" in conv.__dict__  # the overlap-add path ran
    ref = F.conv_transpose1d(x, conv.kernel().detach(), conv.bias.detach(), stride, padding)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    conv4 = WNConvTranspose1d(c_in, c_out, 3, 2)  # not 2s taps: the plain conv
    with torch.no_grad():
        torch.testing.assert_close(conv4(x), F.conv_transpose1d(x, conv4.kernel(), conv4.bias, 2))
        assert "_ola_cache" not in conv4.__dict__


@pytest.mark.parametrize("weight_norm", [True, False])
def test_overlap_add_cache_follows_weight_updates(weight_norm):
    conv = WNConvTranspose1d(4, 3, 4, 2, weight_norm=weight_norm)
    x = torch.randn(1, 4, 9)
    with torch.inference_mode():  # the caches also work for (and after) inference mode
        first = conv(x)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), first)
        for p in conv.parameters():
            p.mul_(1.5)  # in place, as an optimizer step or load_state_dict writes
        ref = F.conv_transpose1d(x, conv.kernel(), conv.bias, 2)
        torch.testing.assert_close(conv(x), ref, rtol=0, atol=1e-5)


def test_overlap_add_under_bf16_autocast():
    conv = WNConvTranspose1d(6, 3, 8, 4, padding=2)
    x = torch.randn(2, 6, 11)
    with torch.no_grad():
        ref = F.conv_transpose1d(x, conv.kernel(), conv.bias, 4, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for inp in (x, x.bfloat16()):  # fp32 input, and a bf16 activation from an earlier layer
                torch.testing.assert_close(conv(inp).float(), ref, rtol=0, atol=0.05)
