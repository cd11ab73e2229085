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


def _reference(q, k, v, scale):
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v


@torch.no_grad()
def test_attend_cpu_bf16_per_head_route_is_as_accurate_as_sdpa():
    from visualtok.nn import attention as A

    g = torch.Generator().manual_seed(0)
    q = (2 * torch.randn(2, 3, 37, 16, generator=g)).bfloat16()
    k = (2 * torch.randn(2, 3, 41, 16, generator=g)).bfloat16()
    v = torch.randn(2, 3, 41, 16, generator=g).bfloat16()
    if torch._C._cpu._is_amx_tile_supported():
        assert not A._per_head_applies(q, k, v, None, False)  # AMX CPUs keep the flash kernel
        return
    assert A._per_head_applies(q, k, v, None, False)
    for scale in (None, 0.3):
        ref = _reference(q, k, v, 16**-0.5 if scale is None else scale)
        got = A.attend(q, k, v, scale=scale)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
        assert got.dtype == torch.bfloat16 and got.shape == sdpa.shape
        err, err_sdpa = (got.double() - ref).abs(), (sdpa.double() - ref).abs()
        # peaked attention (these logits): the rounding of the normalised softmax to bf16 adds
        # up to ~1.4x flash's mean error; at TiTok's diffuse attention the two are equal
        assert err.mean() <= 1.5 * err_sdpa.mean()
        assert err.max() <= 2 * 2.0**-8 * ref.abs().max()
    # causal attention and fp32 go to SDPA unchanged; bool masks take the route (below)
    assert not A._per_head_applies(q, k, v, None, True)
    assert not A._per_head_applies(q.float(), k.float(), v.float(), None, False)
    assert not A._per_head_applies(q, k, v, torch.zeros(37, 41, dtype=torch.bfloat16), False)


def _masked_reference(q, k, v, scale, mask):
    s = q.double() @ k.double().transpose(-1, -2) * scale
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v.double()


def _qk_normed(g, *shape):
    return torch.nn.functional.layer_norm(torch.randn(*shape, generator=g), shape[-1:])


@torch.no_grad()
@pytest.mark.parametrize("bf16_scores", [False, True])
def test_attend_cpu_bf16_route_with_masks(bf16_scores):
    """The CPU bf16 route with bool masks of every broadcast shape (FlexTok's causal-last one
    included) and with bf16 scores: within bf16 tolerance of the float64 math, masked keys
    exactly ignored, fp32 inputs (SDPA) within fp32 rounding."""
    from visualtok.image.flextok import causal_last_mask
    from visualtok.nn import attention as A

    if torch._C._cpu._is_amx_tile_supported():
        pytest.skip("AMX CPUs keep the flash kernel")
    g = torch.Generator().manual_seed(1)
    B, H, L, hd = 2, 3, 40, 16
    q32, k32 = _qk_normed(g, B, H, L, hd), _qk_normed(g, B, H, L, hd)
    v32 = torch.randn(B, H, L, hd, generator=g)
    q, k, v = q32.bfloat16(), k32.bfloat16(), v32.bfloat16()
    scale = 8.0 / hd  # FlexTok's muP scale: |scores| <= 8
    rand = torch.rand(B, 1, L, L, generator=g) > 0.5
    rand[..., 0] = True  # every row attends somewhere
    masks = {"causal_last": causal_last_mask(24, 16), "[B,1,L,S]": rand,
             "[H,L,S]": rand[0].expand(H, L, L).clone(), "none": None}
    for name, mask in masks.items():
        assert A._per_head_applies(q, k, v, mask, False), name
        full = torch.ones(L, L, dtype=torch.bool) if mask is None else mask
        ref = _masked_reference(q, k, v, scale, full)
        got = A.attend(q, k, v, attn_mask=mask, scale=scale, bf16_scores=bf16_scores)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                scale=scale)
        assert got.dtype == torch.bfloat16 and got.shape == (B, H, L, hd)
        err, err_sdpa = (got.double() - ref).abs(), (sdpa.double() - ref).abs()
        # fp32 scores: 1.2-1.5x flash's mean error at these peaked logits (the normalised
        # probabilities rounded to bf16); bf16 scores (each moved by <= 2**-5): 2.3-2.8x
        assert err.mean() <= (3.5 if bf16_scores else 1.75) * err_sdpa.mean(), name
        assert err.max() <= (4 if bf16_scores else 2) * 2.0**-8 * ref.abs().max(), name
        # fp32: SDPA against the float64 math, within fp32 rounding
        ref32 = _masked_reference(q32, k32, v32, scale, full)
        got32 = A.attend(q32, k32, v32, attn_mask=mask, scale=scale)
        torch.testing.assert_close(got32.double(), ref32, rtol=0, atol=1e-5)
    # masked keys get probability exactly 0: keys no row may see change nothing, bit for bit
    mask = causal_last_mask(24, 16)
    mask[:, 30:] = False
    v2 = v.clone()
    v2[..., 30:, :] = 1e4 * torch.randn(B, H, L - 30, hd, generator=g).bfloat16()
    a = A.attend(q, k, v, attn_mask=mask, scale=scale, bf16_scores=bf16_scores)
    torch.testing.assert_close(A.attend(q, k, v2, attn_mask=mask, scale=scale,
                                        bf16_scores=bf16_scores), a, rtol=0, atol=0)
    # a mask changed in place is read again (the cached bias follows the tensor's version)
    mask[:, :5] = False
    torch.testing.assert_close(
        A.attend(q, k, v, attn_mask=mask, scale=scale, bf16_scores=bf16_scores).double(),
        _masked_reference(q, k, v, scale, mask), rtol=0, atol=8 * 2.0**-8)
    # a row that may attend to nothing: SDPA's result (zeros), not a NaN
    mask[3] = False
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    torch.testing.assert_close(A.attend(q, k, v, attn_mask=mask, scale=scale,
                                        bf16_scores=bf16_scores), sdpa, rtol=0, atol=0)


def test_attention_takes_bf16_scores_only_where_qk_norm_bounds_them():
    assert Attention(64, 1, qk_norm=True, scale=8.0 / 64).bf16_scores  # FlexTok: |s| <= 8
    assert Attention(64, 1, qk_norm=True).bf16_scores  # 1/sqrt(64) * 64 = 8
    assert not Attention(64, 1, qk_norm=True, scale=1.0).bf16_scores  # |s| <= 64
    assert not Attention(64, 1).bf16_scores  # no QK-norm: unbounded scores stay fp32


@torch.no_grad()
def test_query_rows_and_vit_keep_give_exactly_those_rows():
    from visualtok.nn.vit import Transformer

    torch.manual_seed(0)
    attn, x = Attention(32, 4), torch.randn(2, 9, 32)
    full = attn(x)
    torch.testing.assert_close(attn(x, query_rows=slice(-3, None)), full[:, -3:], rtol=0,
                               atol=1e-6)
    mask = torch.rand(9, 9) > 0.2
    mask.fill_diagonal_(True)
    torch.testing.assert_close(attn(x, attn_mask=mask, query_rows=slice(1, 5)),
                               attn(x, attn_mask=mask)[:, 1:5], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="query_rows"):
        attn(x, is_causal=True, query_rows=slice(0, 2))
    vit = Transformer(32, 2, 4).eval()
    torch.testing.assert_close(vit(x, keep=slice(2, 7)), vit(x)[:, 2:7], rtol=0, atol=1e-5)
