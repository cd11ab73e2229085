"""pFID: perturbations through every real quantizer family hit the requested rate and stay valid;
pFID on a tiny tokenizer is 0 without perturbation and positive with it."""

from __future__ import annotations

import math

import pytest
import torch

from visualtok.metrics.fid import RandomTinyFeatures, extract_features, feature_statistics
from visualtok.metrics.pfid import (
    compute_pfid,
    default_strength,
    perturb_codes,
    pfid_label,
)
from visualtok.quantize.config import QuantizerConfig, build_quantizer

# (config, strength, expected P(token changed | selected))
FAMILIES = {
    "vq": (dict(type="vq", dim=8, codebook_size=64), 4, 1 - 1 / 4),
    "rvq": (dict(type="rvq", dim=8, codebook_size=64, num_quantizers=3), 4, 1 - (1 / 4) ** 2),
    "fsq": (dict(type="fsq", dim=4, levels=(8, 5, 5, 5)), 1, 1.0),
    "lfq": (dict(type="lfq", dim=16, group_size=8), 2, 1.0),
    "ptq": (dict(type="ptq", dim=4, bins=16), 1, 1.0),
}


class _Holder(torch.nn.Module):
    def __init__(self, quantizer):
        super().__init__()
        self.quantizer = quantizer


def _interior_codes(q, n: int, g: torch.Generator) -> torch.Tensor:
    """Valid codes; for digit families, digits away from the ends so a shift never clamps."""
    radices = q.layout.radix_tensor()
    if q.layout.kind in ("fsq", "ptq"):
        lo = torch.ones_like(radices)
        span = radices - 2
        return lo + (torch.rand(n, 1, len(radices), generator=g) * span).long()
    return (torch.rand(n, 1, len(radices), generator=g) * radices).long()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_perturb_hits_rate_in_expectation_and_keeps_codes_valid(family):
    cfg, strength, p_change = FAMILIES[family]
    q = build_quantizer(QuantizerConfig(**cfg)).eval()
    g = torch.Generator().manual_seed(0)
    codes = _interior_codes(q, 20000, g).view(200, 100, -1)
    for rate in (0.0, 0.3):
        gen = torch.Generator().manual_seed(1)
        new, changed = perturb_codes(_Holder(q), codes, rate, strength, gen)
        q.layout.validate(new)  # in range for every factor
        assert new.shape == codes.shape and new.dtype == torch.long
        expected = rate * p_change
        sd = math.sqrt(max(expected * (1 - expected), 1e-12) / codes[..., 0].numel())
        assert abs(changed - expected) < 5 * sd + 1e-9, (family, rate, changed, expected)
    # repeatable with the same seed
    a, _ = perturb_codes(_Holder(q), codes, 0.3, strength, torch.Generator().manual_seed(7))
    b, _ = perturb_codes(_Holder(q), codes, 0.3, strength, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_vq_perturbation_picks_among_nearest_codes():
    q = build_quantizer(QuantizerConfig(type="vq", dim=8, codebook_size=64)).eval()
    codes = torch.arange(64).view(1, 64, 1).repeat(50, 1, 1)
    new, _ = perturb_codes(_Holder(q), codes, 1.0, 3, torch.Generator().manual_seed(0))
    cb = q.decode(torch.arange(64).view(1, 64, 1))[0]
    near3 = torch.cdist(cb, cb).topk(3, largest=False).indices  # [64, 3]
    ok = (new[..., 0].unsqueeze(-1) == near3[codes[..., 0]]).any(-1)
    assert bool(ok.all())


def test_defaults_and_label():
    vq = build_quantizer(QuantizerConfig(type="vq", dim=4, codebook_size=4))
    fsq = build_quantizer(QuantizerConfig(type="fsq", dim=4, levels=(8, 5, 5, 5)))
    assert default_strength(vq.layout) == 4 and default_strength(fsq.layout) == 1
    assert pfid_label(0.1, 8, 50000) == "pFID[0.1, 8, 50000]"
    with pytest.raises(ValueError, match="rate"):
        q = build_quantizer(QuantizerConfig(type="vq", dim=4, codebook_size=4))
        perturb_codes(_Holder(q), torch.zeros(1, 2, 1, dtype=torch.long), 1.5, 1)


def test_pfid_on_tiny_tokenizer(real_photos):
    registry = pytest.importorskip("visualtok.registry")
    if "titok_tiny" not in registry.list_models():
        pytest.skip("titok_tiny preset is not registered yet")
    tok = registry.create_model("titok_tiny", image_size=64).eval()
    images = torch.nn.functional.interpolate(real_photos, size=64, mode="bilinear", antialias=True)
    images = torch.cat([images, images.flip(-1), images.flip(-2)]).clamp(0, 1)  # 12 images
    ext = RandomTinyFeatures(feature_dim=16)
    ref = feature_statistics(extract_features(tok.reconstruct(images), ext), ext.name)
    zero = compute_pfid(tok, images, ref, ext, rate=0.0, strength=8, batch_size=6)
    assert zero.pfid == pytest.approx(0.0, abs=1e-6) and zero.changed_fraction == 0.0
    res = compute_pfid(tok, images, ref, ext, rate=0.5, strength=8, batch_size=6, seed=3)
    assert res.num_samples == 12 and res.label == "pFID[0.5, 8, 12]"
    assert 0.25 < res.changed_fraction < 0.65  # 0.5 * (1 - 1/8) in expectation
    assert res.pfid > 0
    again = compute_pfid(tok, images, ref, ext, rate=0.5, strength=8, batch_size=6, seed=3)
    assert again.pfid == pytest.approx(res.pfid, rel=1e-9)
    assert set(res.to_dict()) >= {"pfid", "rate", "strength", "num_samples", "label"}
