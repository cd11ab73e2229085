"""VQToken: seeded adaptive K-means, elbow, hash map, compressed format, metrics, VQ-attention."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path

from benchmarks.bench_vqtoken import release_elbow, release_sweep
from visualtok.metrics.frame_features import PixelPatchFeatures
from visualtok.quantize.search import l2_normalize
from visualtok.video.io import read_video
from visualtok.video.vqtoken import (
    CrossDynamicsAttention,
    CrossDynamicsConfig,
    VQTokenCodes,
    VQTokenConfig,
    compression_ratio,
    elbow_k,
    kmeans_pp_chain,
    kmeans_sweep,
    tok_dense,
    uniform_pool_grid,
    uniform_pool_tokens,
    vqtoken_compress,
)


def _clusters(k: int, t: int = 6, n: int = 40, d: int = 32, noise: float = 0.01, seed: int = 0):
    """Features ``[t, n, d]`` drawn around ``k`` random unit directions (labels returned too)."""
    g = torch.Generator().manual_seed(seed)
    centres = l2_normalize(torch.randn(k, d, generator=g))
    labels = torch.arange(t * n) % k  # every cluster populated
    labels = labels[torch.randperm(t * n, generator=g)]
    x = centres[labels] + noise * torch.randn(t * n, d, generator=g)
    return x.view(t, n, d), labels.view(t, n)


@pytest.fixture(scope="module")
def clip_features():
    """Real frames (stream of water) -> 8 x 64 pixel-patch features (8x8 grid of 14-px patches)."""
    path = shared_path("data", "video", "mdn_stream-of-water.mp4")
    video = read_video(path, 8, size=112, crop=112)
    return PixelPatchFeatures(grid=8, patch=14, dim=96)(video)


def test_seeded_determinism_and_k_in_range(clip_features):
    cfg = VQTokenConfig(min_clusters=3, max_clusters=8, seed=5)
    a, b = vqtoken_compress(clip_features, cfg), vqtoken_compress(clip_features, cfg)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.hash_map, b.hash_map)
    c = vqtoken_compress(clip_features, cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.hash_map, c.hash_map)  # the config seed is the generator's seed
    assert 3 <= a.num_clusters <= 8 and a.ks == list(range(3, 9))
    assert a.hash_map.shape == (8, 64) and a.hash_map.dtype == torch.int64
    assert set(a.hash_map.unique().tolist()) <= set(range(a.num_clusters))
    assert len(a.distortion) == 6 and bool((a.distortion[1:] <= a.distortion[:-1] * 1.05).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbow_picks_true_k_on_synthetic_clusters(seed):
    feats, _ = _clusters(7, seed=seed)
    out = vqtoken_compress(feats, VQTokenConfig(min_clusters=2, max_clusters=16, seed=seed))
    assert out.num_clusters == 7
    # the release's rule on the same curve: no offset by the first K, then clamped at 12
    assert release_elbow(out.ks, out.distortion.tolist()) == 12


def test_elbow_offset_beyond_release_range():
    ks = list(range(12, 33))
    curve = torch.tensor([100.0 - 3 * (k - 12) if k <= 27 else 55.0 - 0.1 * (k - 27) for k in ks])
    assert elbow_k(ks, curve) == 27  # the release can only ever return 12..22
    assert release_elbow(ks, curve.tolist()) == 18  # index 14 of the curvature, + 2 + 2


def test_fixed_k_and_hash_map_reconstruction(clip_features):
    out = vqtoken_compress(clip_features, VQTokenConfig(num_clusters=5))
    assert out.num_clusters == 5 and out.codes.shape == (5, 96) and out.distortion is None
    grid = out.reconstruct()
    assert grid.shape == clip_features.shape
    assert torch.equal(grid[3, 10], out.codes[out.hash_map[3, 10]])
    # each code is the mean of its members' normalised features
    x = l2_normalize(clip_features.reshape(-1, 96))
    members = out.hash_map.flatten() == 2
    assert torch.allclose(out.codes[2], x[members].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="num_clusters"):
        vqtoken_compress(clip_features, VQTokenConfig(num_clusters=0))


def test_sweep_matches_release_loops():
    feats, _ = _clusters(5, t=4, n=30, d=16, noise=0.3, seed=3)
    x = l2_normalize(feats.reshape(-1, 16))
    ks = [3, 4, 5, 6, 7]
    g = torch.Generator().manual_seed(11)
    seeds = kmeans_pp_chain(x, max(ks), g)
    ours = kmeans_sweep(x, ks, seeds=seeds)
    u = torch.rand(max(ks), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ref_labels, ref_dist = release_sweep(x, ks, u, 100, 1e-4)
    assert torch.equal(ours.labels, ref_labels)
    assert torch.allclose(ours.distortion, torch.tensor(ref_dist, dtype=torch.float64), rtol=1e-4)


@pytest.mark.parametrize(
    ("t", "n", "d", "noise", "ks", "seed"),
    [
        (4, 30, 16, 0.3, [1, 2, 3], 0),  # K below the tracked runners-up; K = 1
        (8, 75, 24, 0.6, list(range(2, 12)), 1),  # many iterations: dense and sparse rescoring
        (6, 50, 32, 0.9, [5, 9, 16], 2),  # K not contiguous, loose clusters
    ],
)
def test_sweep_matches_release_loops_across_paths(t, n, d, noise, ks, seed):
    """Same labels, centres and iteration counts as the release's loops, for every K."""
    feats, _ = _clusters(4, t=t, n=n, d=d, noise=noise, seed=seed)
    x = l2_normalize(feats.reshape(-1, d))
    seeds = kmeans_pp_chain(x, max(ks), torch.Generator().manual_seed(seed))
    ours = kmeans_sweep(x, ks, seeds=seeds)
    u = torch.rand(max(ks), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref_labels, ref_dist = release_sweep(x, ks, u, 100, 1e-4)
    assert torch.equal(ours.labels, ref_labels)
    assert torch.allclose(ours.distortion, torch.tensor(ref_dist, dtype=torch.float64), rtol=1e-4)
    assert int(ours.iterations.max()) > 2 and bool((ours.iterations <= 100).all())


def test_compression_ratio_and_tokdense_by_hand(clip_features, tmp_path):
    out = vqtoken_compress(clip_features, VQTokenConfig(min_clusters=3, max_clusters=12))
    k = out.num_clusters
    assert out.num_tokens == k
    assert out.compression_ratio() == pytest.approx(k / (8 * 64))  # 8 frames x 64 tokens
    assert compression_ratio(23328, 32) == pytest.approx(0.0013717, rel=1e-4)  # paper: 0.14%
    assert tok_dense(57.72, 13.08) == pytest.approx(4.413, abs=5e-4)  # paper Table 3
    assert tok_dense(57.46, 32) == pytest.approx(1.796, abs=5e-4)
    assert tok_dense(80.0, k) == pytest.approx(80.0 / k)
    with pytest.raises(ValueError):
        tok_dense(50.0, 0)
    # serialisation round trip
    path = out.save(tmp_path / "clip.safetensors")
    back = VQTokenCodes.load(path)
    assert torch.equal(back.codes, out.codes) and torch.equal(back.hash_map, out.hash_map)
    assert torch.equal(back.reconstruct(), out.reconstruct()) and back.ks == out.ks
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        VQTokenCodes.load(bad)


def test_uniform_pool_baseline():
    feats = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    pooled = uniform_pool_tokens(feats, 3)  # 6 tokens -> chunks of 2 consecutive tokens
    assert torch.equal(pooled, torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]))
    assert uniform_pool_grid(pooled, 2, 3).shape == (2, 3, 2)


def test_feature_errors():
    with pytest.raises(ValueError, match=r"\[T frames"):
        vqtoken_compress(torch.zeros(0, 4, 8))
    with pytest.raises(ValueError, match=r"\[T frames"):
        vqtoken_compress(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="NaN"):
        vqtoken_compress(torch.full((2, 20, 4), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        vqtoken_compress(torch.zeros(2, 20, 4, dtype=torch.long))


def test_cross_dynamics_attention_trains_to_reconstruct(clip_features):
    torch.manual_seed(0)
    feats = l2_normalize(clip_features)
    out = vqtoken_compress(feats, VQTokenConfig(num_clusters=6))
    cfg = CrossDynamicsConfig(feature_dim=96, num_frames=8, tokens_per_frame=64, width=64,
                              heads=4, num_output_tokens=4)
    m = CrossDynamicsAttention(cfg)
    codes, hmap, target = out.codes[None], out.hash_map[None], feats[None]
    tokens = m(codes, hmap)
    assert tokens.shape == (1, 4, 96)  # a fixed number of output tokens, whatever K is
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = m.loss(codes, hmap, target).item()
    for _ in range(40):
        opt.zero_grad()
        loss = m.loss(codes, hmap, target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first
    # padded batch of two videos with different K
    other = vqtoken_compress(feats.flip(0), VQTokenConfig(num_clusters=4))
    codes2 = torch.zeros(2, 6, 96)
    codes2[0], codes2[1, :4] = out.codes, other.codes
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    both = m(codes2, torch.stack([out.hash_map, other.hash_map]), mask)
    assert torch.allclose(both[0], m(codes, hmap)[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"codes must be \[B, K, 96\]"):
        m(torch.zeros(1, 6, 95), hmap)
    with pytest.raises(ValueError, match="code ids"):
        m(codes, hmap + 10)


def test_retrieval_proxy_scores():
    from visualtok.metrics.video_retrieval import (
        reconstruction_cosine,
        retrieval_accuracy,
        set_similarity,
    )

    e = torch.eye(4)
    assert set_similarity(e[:2], e[:2]) == pytest.approx(1.0)
    assert set_similarity(e[:1], e[:2]) == pytest.approx(0.5)  # one of two rows explained
    gallery = [e[[0, 1]], e[[2, 3]]]
    acc, scores = retrieval_accuracy([e[[0]], e[[3]]], gallery)
    assert acc == 1.0 and scores.shape == (2, 2)
    acc, _ = retrieval_accuracy([e[[2]], e[[3]]], gallery)  # first query retrieves the wrong one
    assert acc == 0.5
    assert reconstruction_cosine(e, e) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one gallery item per query"):
        retrieval_accuracy([e], gallery)


def test_frame_feature_extractors_on_a_real_clip():
    from visualtok.metrics import frame_features as ff

    path = shared_path("data", "video", "mdn_friday.mp4")
    video = read_video(path, 2, size=160, crop=160)
    pix = ff.PixelPatchFeatures(grid=4, patch=14, dim=32)(video)
    assert pix.shape == (2, 16, 32)
    import visualtok

    tok = visualtok.load("titok_photo128")
    patches = ff.TokenizerFeatures(tok, "patches")(video)
    assert patches.shape == (2, 256, 256) and torch.isfinite(patches).all()
    lat = ff.TokenizerFeatures(tok, "latents")(video)
    assert lat.shape == (2, 128, 12)
    with torch.no_grad():  # the latents are the tokenizer's own encode_latents of the frames
        from visualtok.data.image_io import center_crop_resize

        ref = tok.encode_latents(center_crop_resize(video, (128, 128)))
    assert torch.allclose(lat, ref)
    try:
        inc = ff.InceptionSpatialFeatures("mixed_10")
    except (ImportError, FileNotFoundError, ValueError) as e:
        pytest.skip(f"FID Inception weights not installed: {e}")
    feats = inc(video)
    assert feats.shape == (2, 64, 2048) and bool((feats >= 0).all())  # post-ReLU concat maps
    out = vqtoken_compress(feats, VQTokenConfig(num_clusters=4))
    assert out.hash_map.shape == (2, 64)
