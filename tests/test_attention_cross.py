"""Cross-attention and DETR-style positional terms in the one ``Attention`` block, checked against
``torch.nn.MultiheadAttention`` (the layer ReTok's Q-Formers use upstream)."""

from __future__ import annotations

import pytest
import torch

from visualtok.nn.attention import Attention, KVCache


def _pair(dim: int = 32, heads: int = 4):
    ref = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    ours = Attention(dim, heads)
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.in_proj_weight)
        ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.proj.weight.copy_(ref.out_proj.weight)
        ours.proj.bias.copy_(ref.out_proj.bias)
    return ref, ours


@torch.no_grad()
def test_cross_attention_with_positions_matches_multihead_attention():
    ref, ours = _pair()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    q_pos, k_pos = torch.randn(5, 32), torch.randn(2, 7, 32)
    expected = ref(x + q_pos, memory + k_pos, memory, need_weights=False)[0]
    got = ours(x, context=memory, q_pos=q_pos, k_pos=k_pos)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # positions reach queries and keys only: values are the raw memory
    wrong = ref(x + q_pos, memory + k_pos, memory + k_pos, need_weights=False)[0]
    assert (got - wrong).abs().max() > 1e-3
    # self-attention with q = k = x + pos, v = x (the Q-Former's self-attention)
    expected = ref(x + q_pos, x + q_pos, x, need_weights=False)[0]
    torch.testing.assert_close(ours(x, q_pos=q_pos, k_pos=q_pos), expected, rtol=0, atol=1e-6)
    # plain cross-attention, and the fused self-attention path unchanged
    torch.testing.assert_close(ours(x, context=memory), ref(x, memory, memory)[0], rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(ours(x), ref(x, x, x)[0], rtol=0, atol=1e-6)


def test_cross_attention_gradients_and_errors():
    _, ours = _pair()
    x = torch.randn(2, 3, 32, requires_grad=True)
    memory = torch.randn(2, 4, 32, requires_grad=True)
    ours(x, context=memory, k_pos=torch.randn(4, 32)).sum().backward()
    assert x.grad.abs().sum() > 0 and memory.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"context must be \[B, S, 32\]"):
        ours(x, context=torch.randn(3, 4, 32))
    cache = KVCache(2, 4, 8, 8)
    with pytest.raises(ValueError, match="do not combine"):
        ours(x, context=memory, kv_cache=cache, cache_positions=torch.arange(3))
