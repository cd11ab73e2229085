"""Protocol tests run on every quantizer family (DESIGN.md §3-4)."""

from __future__ import annotations

import pytest
import torch

from visualtok.quantize import QuantizerConfig, build_quantizer

FAMILIES = {
    "vq": dict(type="vq", dim=8, codebook_size=64),
    "vq_cosine_ema": dict(type="vq", dim=16, codebook_dim=8, codebook_size=64, l2_normalize=True,
                          ema=True, dead_code_threshold=0.1, rotation_trick=True),
    "lfq": dict(type="lfq", dim=16, group_size=4),
    "fsq": dict(type="fsq", dim=4, levels=(8, 5, 5, 5)),
    "rvq": dict(type="rvq", dim=8, codebook_size=32, num_quantizers=3, quantizer_dropout=0.5),
    "ptq": dict(type="ptq", dim=6, bins=16),
}


def make(name: str):
    q = build_quantizer(QuantizerConfig(**FAMILIES[name]))
    if name.startswith("vq") or name == "rvq":
        # a spread-out codebook so codes are informative (the default init is tiny)
        for p in q.state_dict(keep_vars=True).values():
            if p.ndim == 2 and p.shape[0] in (32, 64):
                p.data.normal_()
    return q


def latents(q, shape=(2, 3, 5)) -> torch.Tensor:
    return torch.randn(*shape, q.dim) * 1.5


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_round_trip_is_exact(name):
    q = make(name).eval()
    z = latents(q)
    out = q(z)
    assert out.codes.shape == (2, 3, 5, q.layout.num_factors) and out.codes.dtype == torch.int64
    assert out.z_q.shape == z.shape
    assert torch.equal(q.encode(z), out.codes)
    assert torch.equal(q.decode(out.codes), out.z_q)


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_batch_encodes_and_decodes_consistently(name):
    q = make(name).eval()
    z = latents(q, (0, 3, 5))
    codes = q.encode(z)
    assert codes.shape == (0, 3, 5, q.layout.num_factors) and codes.dtype == torch.int64
    z_q = q.decode(codes)
    assert z_q.shape == (0, 3, 5, q(latents(q)).z_q.shape[-1])
    assert q(z).z_q.shape == z.shape


@pytest.mark.parametrize("name", FAMILIES)
def test_flat_ids_are_inverse(name):
    q = make(name).eval()
    codes = q.encode(latents(q))
    ids = q.to_ids(codes)
    assert ids.shape == codes.shape[:-1]
    assert int(ids.max()) < q.layout.flat_vocab
    assert torch.equal(q.from_ids(ids), codes)


@pytest.mark.parametrize("name", FAMILIES)
def test_codes_unchanged_under_cpu_bf16_autocast(name):
    q = make(name).eval()
    z = latents(q, (4, 64)).bfloat16()
    ref = q(z.float()).codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.equal(out.codes, ref)
    assert out.z_q.dtype == torch.bfloat16


@pytest.mark.parametrize("name", FAMILIES)
def test_losses_same_keys_train_and_eval_zero_in_eval(name):
    q = make(name)
    z = latents(q)
    train = q.train()(z).losses
    ev = q.eval()(z).losses
    assert set(train) == set(ev) and "total" in ev
    assert all(float(v) == 0.0 for v in ev.values())
    parts = sum(v for k, v in train.items() if k != "total") + torch.zeros(())
    assert torch.allclose(train["total"], parts)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_flow_through_z_q(name):
    q = make(name).train()
    z = latents(q).requires_grad_(True)
    out = q(z)
    (out.z_q.square().sum() + out.losses["total"]).backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())
    assert float(z.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_inputs_raise_clear_errors(name):
    q = make(name).eval()
    d = q.dim
    with pytest.raises(ValueError, match="channels last"):
        q(torch.randn(2, 3, d + 1))
    with pytest.raises(ValueError, match="rank"):
        q(torch.randn(d))
    for bad in (float("nan"), float("inf")):
        z = torch.randn(2, 3, d)
        z[0, 1, 0] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            q(z)
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.ones(2, 3, d, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        q([[0.0] * d])
    codes = q.encode(torch.randn(2, 3, d))
    with pytest.raises(ValueError, match="out of range"):
        q.decode(codes + torch.tensor(q.layout.radices))
    with pytest.raises(ValueError, match="out of range"):
        q.decode(codes - 100)
    if name != "rvq":  # RVQ also accepts a prefix of its levels (tested in its own file)
        with pytest.raises(ValueError, match="factors"):
            q.decode(codes[..., :-1] if codes.shape[-1] > 1 else torch.cat([codes, codes], -1))
    with pytest.raises(TypeError, match="integer"):
        q.decode(codes.float())
    with pytest.raises(ValueError, match="rate"):
        q.perturb(codes, 1.5)
    with pytest.raises(ValueError, match="strength"):
        q.perturb(codes, 0.5, strength=0)


# expected probability that a selected token changes, and the strength that gives it
PERTURB = {"vq": (2, 0.5), "vq_cosine_ema": (2, 0.5), "lfq": (3, 1.0), "fsq": (1, 1.0),
           "rvq": (2, 0.75), "ptq": (2, 1.0)}


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_perturb_rate_within_statistical_bounds(name, rate):
    q = make(name).eval()
    strength, p_change = PERTURB[name]
    n = 8000
    if q.layout.kind in ("fsq", "ptq"):  # mid-range digits: a +-strength shift never clamps
        codes = (torch.tensor(q.layout.radices) // 2).expand(n, -1).reshape(2, n // 2, -1)
    else:
        codes = q.encode(latents(q, (2, n // 2)))
    g = torch.Generator().manual_seed(1)
    new = q.perturb(codes, rate, strength, generator=g)
    assert new.shape == codes.shape and new.dtype == torch.int64
    q.layout.validate(new)  # still valid codes
    changed = (new != codes).any(-1).float().mean().item()
    expected = rate * p_change
    sigma = (expected * (1 - expected) / n) ** 0.5
    assert abs(changed - expected) <= 5 * sigma + 1e-9, (changed, expected)
    again = q.perturb(codes, rate, strength, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, new)  # reproducible from the generator


@pytest.mark.parametrize("name", FAMILIES)
def test_usage_and_state_dict_round_trip(name):
    q = make(name).eval()
    z = latents(q, (4, 256))
    codes = q.encode(z)
    u = q.usage(codes)
    assert 0 < u["usage"] <= 1 and u["num_tokens"] == 1024
    assert len(u["factors"]) == q.layout.num_factors
    assert u["entropy_bits"] <= q.layout.bits_per_token + 1e-9
    q2 = build_quantizer(QuantizerConfig(**FAMILIES[name]))
    q2.load_state_dict(q.state_dict(), strict=True)
    assert torch.equal(q2.eval().encode(z), codes)
