"""FSQ (FlexTok parity), LFQ / binary (group-wise entropy, 128-bit codes), TokenBridge PTQ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visualtok.quantize import QuantizerConfig, build_quantizer
from visualtok.quantize.lfq import entropy


def build(**kw):
    return build_quantizer(QuantizerConfig(**kw))


# ---------------------------------------------------------------- FSQ
def test_fsq_matches_flextok_fixture(fixtures_dir):
    from safetensors.torch import load_file

    path = fixtures_dir / "flextok" / "encoder_fsq" / "io.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not found (FlexTok FSQ parity fixture)")
    io = load_file(str(path))
    q = build(type="fsq", dim=6, levels=[8, 8, 8, 5, 5, 5]).eval()
    out = q(io["pre_fsq"])
    torch.testing.assert_close(out.z_q, io["quants"], atol=1e-6, rtol=0)
    assert torch.equal(q.to_ids(out.codes), io["tokens"])
    decoded = q.decode(q.from_ids(io["tokens"]))
    torch.testing.assert_close(decoded, io["quants_from_tokens"], atol=1e-6, rtol=0)
    train = q.train()(io["pre_fsq"])  # straight-through: same values in training
    torch.testing.assert_close(train.z_q, io["quants"], atol=1e-6, rtol=0)


def test_fsq_levels_digits_and_little_endian_ids():
    q = build(type="fsq", dim=4, levels=(8, 5, 5, 5)).eval()
    assert q.layout.flat_vocab == 1000 and q.layout.radices == (8, 5, 5, 5)
    big = torch.tensor([[[-50.0, -50.0, -50.0, -50.0], [50.0, 50.0, 50.0, 50.0]]])
    codes = q.encode(big)
    assert codes.tolist() == [[[0, 0, 0, 0], [7, 4, 4, 4]]]
    assert q.to_ids(codes).tolist() == [[0, 999]]
    z_q = q.decode(codes)
    assert z_q.tolist() == [[[-1.0, -1.0, -1.0, -1.0], [0.75, 1.0, 1.0, 1.0]]]
    one = torch.tensor([[[50.0, -50.0, -50.0, -50.0]]])
    assert q.to_ids(q.encode(one)).item() == 7  # first channel least significant
    with pytest.raises(ValueError, match="number of levels"):
        build(type="fsq", dim=5, levels=(8, 5, 5, 5))


def test_fsq_option_from_another_family_is_rejected():
    with pytest.raises(ValueError, match="does not use"):
        build(type="fsq", dim=4, levels=(8, 5, 5, 5), codebook_size=10)


# ---------------------------------------------------------------- LFQ
def test_lfq_128_bit_codes_end_to_end():
    q = build(type="lfq", dim=128, group_size=8)
    assert q.layout.radices == (256,) * 16 and q.layout.flat_vocab is None
    assert q.layout.bits_per_token == 128
    z = torch.randn(2, 64, 128, requires_grad=True)
    out = q.train()(z)
    assert out.codes.shape == (2, 64, 16)
    out.losses["total"].backward()
    assert z.grad is not None
    q.eval()
    codes = q.encode(z.detach())
    assert torch.equal(q.decode(codes), torch.where(z.detach() > 0, 1.0, -1.0))
    u = q.usage(codes)
    assert u["bits_per_token"] == 128 and 0 < u["usage"] <= 1
    assert u["factors"][0]["radix"] == 256
    with pytest.raises(ValueError, match="flat ids"):
        q.to_ids(codes)
    with pytest.raises(ValueError, match="flat ids"):
        q.from_ids(torch.zeros(3, dtype=torch.long))


def test_lfq_bit_order_features_and_scale():
    q = build(type="lfq", dim=8, group_size=4, bit_scale=0.5).eval()
    z = -torch.ones(1, 1, 8)
    z[..., 0] = 1.0  # bit 0 of group 0
    z[..., 6] = 1.0  # bit 2 of group 1
    codes = q.encode(z)
    assert codes.tolist() == [[[1, 4]]]
    assert q.to_ids(codes).item() == 1 + 4 * 16
    assert torch.equal(q.decode(codes), z * 0.5)
    assert torch.equal(q.features(codes), z)
    flipped = q.perturb(codes, 1.0, strength=3)
    assert int((q.features(flipped) != z).sum()) == 3
    with pytest.raises(ValueError, match="divide dim"):
        build(type="lfq", dim=10, group_size=4)


@pytest.mark.parametrize("training", [False, True])
def test_lfq_values_are_exactly_the_sign_of_z_with_zero_negative(training):
    q = build(type="lfq", dim=8, group_size=4, bit_scale=0.75).train(training)
    z = torch.tensor([[[0.3, -0.2, 0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0]]], requires_grad=True)
    out = q(z)
    want = torch.where(z.detach() > 0, 0.75, -0.75)  # z == 0 is bit 0, as in MAGVIT-v2
    assert torch.equal(out.z_q.detach(), want)
    assert torch.equal(q.decode(out.codes), want)
    assert out.codes.tolist() == [[[0b0001, 0b0101]]]
    if training:  # straight-through: the gradient reaches z unchanged
        out.z_q.sum().backward()
        assert torch.equal(z.grad, torch.ones_like(z))


def test_lfq_groupwise_entropy_against_full_codebook_softmax():
    """Per-sample entropy is exact (the 2**D softmax factorizes); batch entropy bounds it above."""
    d, g, t = 6, 3, 0.5
    q = build(type="lfq", dim=d, group_size=g, entropy_temperature=t)
    z = torch.randn(300, d)
    per_sample, codebook = q._entropies(z)
    bits = (torch.arange(2**d).unsqueeze(1) >> torch.arange(d)) % 2
    c = bits.float() * 2 - 1  # [64, 6], full codebook
    p = (-(z.unsqueeze(1) - c).square().sum(-1) / t).softmax(-1)
    torch.testing.assert_close(per_sample, entropy(p).mean(), atol=1e-5, rtol=1e-5)
    full_codebook = entropy(p.mean(0))
    assert float(codebook) >= float(full_codebook) - 1e-5
    assert float(codebook) <= d * math.log(2) + 1e-5


def test_lfq_entropy_loss_spreads_collapsed_codes():
    q = build(type="lfq", dim=8, group_size=4, entropy_weight=1.0, beta=0.0,
              entropy_temperature=1.0)
    z = (0.3 + 0.05 * torch.randn(4, 64, 8)).requires_grad_(True)  # every token has the same code
    opt = torch.optim.Adam([z], lr=0.05)
    before = q.usage(q.encode(z.detach()))["factors"][0]["used"]
    for _ in range(30):
        loss = q.train()(z).losses["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = q.usage(q.encode(z.detach()))["factors"][0]["used"]
    assert before == 1 and after >= 12


# ---------------------------------------------------------------- PTQ (TokenBridge)
def test_ptq_edges_and_centroids_match_scipy():
    st = pytest.importorskip("scipy.stats")
    q = build(type="ptq", dim=16, bins=64, value_range=5.0)
    sigma = 5.0 / 3
    p = np.linspace(st.norm.cdf(-3), st.norm.cdf(3), 65)
    ref_edges = sigma * st.norm.ppf(p)
    ref_edges[0], ref_edges[-1] = -5.0, 5.0
    a, b = ref_edges[:-1] / sigma, ref_edges[1:] / sigma
    ref_centroids = sigma * st.truncnorm.mean(a, b)
    edges, centroids = q.edges().double().numpy(), q.centroids().double().numpy()
    np.testing.assert_allclose(edges, np.broadcast_to(ref_edges, edges.shape), atol=1e-6, rtol=0)
    np.testing.assert_allclose(centroids, np.broadcast_to(ref_centroids, centroids.shape),
                               atol=1e-6, rtol=0)
    # equal probability: each bin holds 1/64 of the truncated normal
    mass = np.diff(st.norm.cdf(ref_edges / sigma))
    np.testing.assert_allclose(mass, mass.mean(), rtol=1e-9)
    assert q.layout.radices == (64,) * 16 and q.layout.bits_per_token == 96
    assert not list(q.parameters())


def test_ptq_nearest_centroid_assignment_and_latent_scale():
    q = build(type="ptq", dim=4, bins=8, value_range=5.0, latent_scale=0.25).eval()
    z = torch.randn(3, 50, 4) * 8
    codes = q.encode(z)
    x = (z * 0.25).clamp(-5, 5)
    brute = (x.unsqueeze(-1) - q.centroids()).abs().argmin(-1)
    assert torch.equal(codes, brute)
    torch.testing.assert_close(q.decode(codes), q.centroids()[torch.arange(4), codes] / 0.25)
    assert q(z).losses["total"] == 0


def test_ptq_per_channel_calibration():
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0])
    data = torch.randn(8, 512, 4) * scales + torch.tensor([0.0, 1.0, -1.0, 0.0])
    q = build(type="ptq", dim=4, bins=16, per_channel=True).calibrate([data[:4], data[4:]])
    torch.testing.assert_close(q.sigma, scales, rtol=0.1, atol=0)
    torch.testing.assert_close(q.center, torch.tensor([0.0, 1.0, -1.0, 0.0]), atol=0.3, rtol=0)
    codes = q.eval().encode(data)
    for c in range(4):  # calibrated bins are used evenly on Gaussian data
        counts = torch.bincount(codes[..., c].reshape(-1), minlength=16).float()
        assert counts.min() > 0.3 * counts.mean()
    err_cal = (q.decode(codes) - data).square().mean(dim=(0, 1))
    glob = build(type="ptq", dim=4, bins=16).eval()
    err_glob = (glob.decode(glob.encode(data)) - data).square().mean(dim=(0, 1))
    assert float(err_cal[0]) < float(err_glob[0])  # narrow channel: finer bins
    with pytest.raises(ValueError, match="channels"):
        q.calibrate([torch.randn(2, 3, 5)])


@pytest.mark.parametrize("widths", [(7, 7), (1, 3, 8, 2), (20, 20), (62,)])
def test_bit_packer_round_trip_matches_the_definition(widths):
    from visualtok.quantize.bits import BitPacker

    packer = BitPacker(widths)
    g = torch.Generator().manual_seed(0)
    codes = torch.stack([torch.randint(0, 2**min(w, 40), (64,), generator=g) for w in widths], -1)
    bits = packer.unpack(codes)
    assert bits.shape == (64, sum(widths)) and set(bits.unique().tolist()) <= {0, 1}
    offset = 0
    for f, w in enumerate(widths):  # bit j of factor f has weight 2**j
        expected = sum(bits[:, offset + j] << j for j in range(w))
        assert torch.equal(expected, codes[:, f])
        offset += w
    assert torch.equal(packer.pack(bits), codes)
    assert torch.equal(packer.pack(bits.bool()), codes)
    with pytest.raises(ValueError, match="bit widths"):
        BitPacker((0, 3))
