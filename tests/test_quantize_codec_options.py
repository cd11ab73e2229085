"""The quantizer-core options the audio codecs need: raw codebook rows behind an l2 search (DAC),
gradients through every RVQ level (EnCodec, DAC), and quantizer dropout drawn per sample (DAC)."""

from __future__ import annotations

import pytest
import torch

from visualtok.quantize import QuantizerConfig, build_quantizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _rvq(**kw):
    base = dict(type="rvq", dim=6, codebook_size=16, codebook_dim=3, num_quantizers=4,
                l2_normalize=True)
    return build_quantizer(QuantizerConfig(**{**base, **kw}))


def test_raw_codebook_rows_decode_and_search():
    torch.manual_seed(0)
    q = build_quantizer(QuantizerConfig(type="vq", dim=5, codebook_size=32, codebook_dim=4,
                                        l2_normalize=True, raw_codebook_rows=True)).eval()
    with torch.no_grad():
        q.embedding.weight.mul_(torch.rand(32, 1) * 5 + 0.5)  # rows of very different norms
    z = torch.randn(2, 7, 5)
    codes = q.encode(z)
    # the search is the cosine one: same codes as the normalised quantizer
    cos = build_quantizer(QuantizerConfig(type="vq", dim=5, codebook_size=32, codebook_dim=4,
                                          l2_normalize=True)).eval()
    cos.load_state_dict(q.state_dict())
    assert torch.equal(cos.encode(z), codes)
    # but the output is the raw row, through the output projection
    want = q.project_out(q.embedding.weight[codes[..., 0]])
    torch.testing.assert_close(q.decode(codes), want, rtol=0, atol=0)
    assert not torch.allclose(cos.decode(codes), want, atol=1e-3)
    assert torch.equal(q(z).z_q, q.decode(codes))  # eval: forward == decode(encode)


def test_raw_rows_losses_use_raw_values():
    torch.manual_seed(1)
    q = build_quantizer(QuantizerConfig(type="vq", dim=4, codebook_size=8, codebook_dim=4,
                                        l2_normalize=True, raw_codebook_rows=True, beta=0.25))
    q.train()
    z = torch.randn(3, 10, 4)
    out = q(z)
    x = q.project_in(z.reshape(-1, 4))
    e = q.embedding.weight[out.codes.reshape(-1)]
    torch.testing.assert_close(out.losses["codebook"], (e - x).pow(2).mean())
    torch.testing.assert_close(out.losses["commitment"], 0.25 * (x - e).pow(2).mean())


@pytest.mark.parametrize("all_levels", [False, True])
def test_rvq_level_projections_get_gradients(all_levels):
    torch.manual_seed(2)
    q = _rvq(all_level_gradients=all_levels).train()
    z = torch.randn(2, 9, 6, requires_grad=True)
    out = q(z)
    (out.z_q.pow(2).sum() + out.losses["total"]).backward()
    for i, level in enumerate(q.levels):
        g_out = level.project_out.weight.grad
        got = g_out is not None and bool(g_out.abs().sum() > 0)
        assert got == (all_levels or i == 0), f"level {i} project_out"
        assert level.project_in.weight.grad.abs().sum() > 0  # commitment reaches project_in
    assert z.grad.abs().sum() > 0


def test_rvq_all_level_gradients_match_the_manual_chain():
    torch.manual_seed(3)
    q = _rvq(all_level_gradients=True).train()
    z = torch.randn(1, 5, 6, requires_grad=True)
    out = q(z)
    out.z_q.sum().backward()
    g = z.grad.clone()
    # the same chain by hand (straight-through at each level, residual not detached)
    z.grad = None
    residual, total = z.reshape(-1, 6), 0
    for level in q.levels:
        x = level.project_in(residual)
        xn = x / x.norm(dim=-1, keepdim=True)
        e = torch.nn.functional.normalize(level.embedding.weight, dim=-1)[
            (xn.detach() @ torch.nn.functional.normalize(level.embedding.weight, dim=-1).T)
            .argmax(1)]
        y = level.project_out(xn + (e - xn).detach())
        total = total + y
        residual = residual - y
    total.sum().backward()
    torch.testing.assert_close(z.grad, g)


def test_rvq_dropout_per_sample():
    torch.manual_seed(4)
    q = _rvq(quantizer_dropout=0.5, dropout_per_sample=True).train()
    z = torch.randn(8, 6, 6)
    seen = set()
    for _ in range(6):
        out = q(z)
        ref = q.eval()
        for b in range(8):
            depths = [k for k in range(1, 5)
                      if torch.allclose(out.z_q[b], ref.decode(out.codes[b:b + 1], depth=k)[0],
                                        atol=1e-5)]
            assert len(depths) == 1
            if b >= 4:  # floor(8 * 0.5) = 4: the last four samples keep every level
                assert depths == [4]
            else:
                seen.add(depths[0])
        q.train()
        assert 1.0 <= float(out.stats["active_levels"]) <= 4.0
    assert len(seen) >= 2  # different prefixes drawn for different samples / steps
    with pytest.raises(ValueError, match="does not use"):
        build_quantizer(QuantizerConfig(type="vq", dim=4, dropout_per_sample=True))


def test_rvq_encode_depth_is_the_prefix_of_the_full_codes():
    torch.manual_seed(5)
    q = _rvq(raw_codebook_rows=True).eval()
    z = torch.randn(3, 11, 6)
    full = q.encode(z)
    for d in (1, 2, 4):
        assert torch.equal(q.encode(z, depth=d), full[..., :d])
    with pytest.raises(ValueError, match="depth must be an int in \\[1, 4\\]"):
        q.encode(z, depth=5)
    with pytest.raises(ValueError, match="NaN"):
        q.encode(torch.full((1, 2, 6), float("nan")), depth=2)
