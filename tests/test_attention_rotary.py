"""Rotary position embeddings in the one ``Attention`` block: bitwise the written-out rotation
(LlamaGen's real arithmetic), whether q and k are rotated in one call or one at a time."""

from __future__ import annotations

import pytest
import torch

from visualtok.nn.attention import Attention, apply_rotary, rotary_tables


def _written_out(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``(x0 cos - x1 sin, x0 sin + x1 cos)`` on interleaved pairs, in fp32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1).flatten(-2).to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 12, 1, 64), (2, 3, 37, 16), (3, 2, 300, 8)])
def test_rotary_is_bitwise_the_written_out_rotation(shape):
    torch.manual_seed(0)
    cos, sin = rotary_tables(torch.arange(shape[2]) + 5, shape[-1])
    x = torch.randn(shape)
    assert torch.equal(apply_rotary(x, cos, sin), _written_out(x, cos, sin))
    xt = torch.randn(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2)  # strided input
    assert torch.equal(apply_rotary(xt, cos, sin), _written_out(xt, cos, sin))
    xb = x.bfloat16()  # other dtypes: the math in fp32, the result cast back
    out = apply_rotary(xb, cos, sin)
    assert out.dtype == torch.bfloat16 and torch.equal(out, _written_out(xb, cos, sin))


@torch.no_grad()
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_rotates_q_and_k_as_written_out(qk_norm):
    """The fused rotation of q and k inside ``Attention`` gives what rotating q and k one at a
    time with the written-out formula gives, through the whole block."""
    torch.manual_seed(1)
    attn = Attention(32, 4, qkv_bias=False, proj_bias=False, qk_norm=qk_norm).eval()
    x = torch.randn(2, 9, 32)
    cos, sin = rotary_tables(torch.arange(9), 8)
    qkv = attn.qkv(x).view(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    q, k = _written_out(q, cos, sin), _written_out(k, cos, sin)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = attn.proj(ref.transpose(1, 2).reshape(2, 9, 32))
    got = attn(x, rotary=(cos, sin), is_causal=True)
    assert torch.equal(got, expected)
