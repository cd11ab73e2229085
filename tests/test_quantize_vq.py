"""VectorQuantizer: TiTok-style lookup and losses, chunked search, k-means, dead codes, EMA,
rotation trick, distributed synchronisation; RVQ on top of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from visualtok.quantize import QuantizerConfig, build_quantizer
from visualtok.quantize.search import nearest_code, topk_nearest
from visualtok.quantize.vq import rotate_to


def vq(**kw):
    return build_quantizer(QuantizerConfig(type="vq", **kw))


def clustered(n_clusters=64, dim=8, per=16, spread=0.05, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, dim, generator=g) * 3
    noise = spread * torch.randn(n_clusters * per, dim, generator=g)
    pts = centers.repeat_interleave(per, 0) + noise
    return pts[torch.randperm(pts.shape[0], generator=g)].reshape(4, -1, dim)


def test_titok_cosine_lookup_and_losses_match_official_formula():
    q = vq(dim=12, codebook_size=4096, l2_normalize=True)
    assert list(q.state_dict()) == ["embedding.weight"]  # official key: quantize.embedding.weight
    q.embedding.weight.data.normal_()
    z = torch.randn(8, 32, 12)
    zf = F.normalize(z.reshape(-1, 12), dim=-1)
    e = F.normalize(q.embedding.weight, dim=-1)
    d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
    idx = d.argmin(1)
    out = q.train()(z)
    assert torch.equal(out.codes.reshape(-1), idx)
    zq = e[idx]
    torch.testing.assert_close(out.losses["commitment"], 0.25 * F.mse_loss(zf, zq))
    torch.testing.assert_close(out.losses["codebook"], F.mse_loss(zq, zf))
    torch.testing.assert_close(out.z_q.reshape(-1, 12), zq, atol=1e-6, rtol=0)
    assert torch.equal(q.eval()(z).z_q.reshape(-1, 12), zq)  # eval: the rows themselves


@pytest.mark.parametrize("k", [7, 300])
def test_chunked_search_equals_dense_argmin(k):
    x, cb = torch.randn(1000, 5), torch.randn(k, 5)
    dense = torch.cdist(x, cb).argmin(1)
    assert torch.equal(nearest_code(x, cb, chunk_size=64, max_elements=1000), dense)
    top = topk_nearest(x, cb, 3, chunk_size=64, max_elements=1000)
    assert torch.equal(top[:, 0], dense)
    assert torch.equal(top, torch.cdist(x, cb).topk(3, largest=False).indices)


def collapsed(q):
    """Every row the same vector: all tokens tie on code 0 (a fully collapsed codebook)."""
    q.embedding.weight.data[:] = 0.01 * torch.randn(1, q.codebook_dim)
    if hasattr(q, "embed_avg"):
        q.embed_avg.copy_(q.embedding.weight)


def used(q, z) -> int:
    return int(torch.unique(q.encode(z)).numel())


@pytest.mark.parametrize("cosine", [False, True])
def test_kmeans_calibrate_revives_collapsed_codebook(cosine):
    z = clustered()
    q = vq(dim=8, codebook_size=64, l2_normalize=cosine, kmeans_iters=10)
    collapsed(q)
    assert used(q, z) <= 3
    q.calibrate([z])
    assert used(q, z) >= 48


def test_kmeans_init_on_first_training_batch_once():
    z = clustered()
    q = vq(dim=8, codebook_size=64, kmeans_init=True)
    collapsed(q)
    assert not bool(q.initted)
    q.train()(z)
    assert bool(q.initted) and used(q, z) >= 48
    w = q.embedding.weight.detach().clone()
    q.train()(z * 0 + 5.0)  # second batch: no re-initialisation
    assert torch.equal(q.embedding.weight, w)
    assert "initted" in q.state_dict()  # a resumed run does not re-initialise


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart_revives_collapsed_codebook(ema):
    z = clustered()
    q = vq(dim=8, codebook_size=64, ema=ema, dead_code_threshold=0.5, ema_decay=0.5)
    collapsed(q)
    assert used(q, z) <= 3
    q.train()
    for _ in range(3):
        out = q(z)
    assert float(out.stats["dead_codes"]) < 64
    assert used(q, z) >= 30


@pytest.mark.parametrize("kw", [dict(l2_normalize=True), dict(rotation_trick=True)])
def test_dead_code_restart_with_backward_and_optimizer(kw):
    """Restarts must not modify the codebook after the step's graph used it (autograd error)."""
    z = clustered()
    q = vq(dim=8, codebook_size=64, dead_code_threshold=0.5, ema_decay=0.5, kmeans_init=True, **kw)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    collapsed(q)
    q.train()
    for _ in range(4):
        zz = z.clone().requires_grad_(True)
        out = q(zz)
        (out.z_q.square().mean() + out.losses["total"]).backward()
        opt.step()
        opt.zero_grad()
        assert zz.grad is not None and torch.isfinite(zz.grad).all()
    assert used(q, z) >= 30


def test_ema_codebook_converges_to_cluster_means():
    centers = torch.randn(16, 8) * 3
    z = (centers.repeat(32, 1) + 0.05 * torch.randn(512, 8)).reshape(4, 128, 8)
    q = vq(dim=8, codebook_size=16, ema=True, ema_decay=0.8)
    assert not q.embedding.weight.requires_grad
    q.embedding.weight.data.copy_(centers + 0.5 * torch.randn(16, 8))  # near, not at, the means
    q.embed_avg.copy_(q.embedding.weight)
    errs = [float((q.eval()(z).z_q - z).square().mean())]
    for _ in range(15):
        q.train()(z)
        errs.append(float((q.eval()(z).z_q - z).square().mean()))
    assert errs[-1] < 0.1 * errs[0] and errs[-1] < 0.01
    torch.testing.assert_close(q.embedding.weight, centers, atol=0.05, rtol=0)


def test_plain_codebook_loss_goes_down_with_sgd():
    z = clustered(n_clusters=32, per=16)
    q = vq(dim=8, codebook_size=32)
    q.embedding.weight.data.normal_()
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    first = None
    for _ in range(40):
        loss = q.train()(z).losses["total"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_rotation_trick_value_and_gradient():
    x = torch.randn(100, 6, requires_grad=True)
    e = torch.randn(100, 6)
    out = rotate_to(x, e)
    torch.testing.assert_close(out, e, atol=1e-5, rtol=1e-5)
    g = torch.randn(100, 6)
    out.backward(g)
    # the gradient is a rotation of g scaled by |e| / |x|
    ratio = x.grad.norm(dim=-1) / g.norm(dim=-1)
    torch.testing.assert_close(ratio, e.norm(dim=-1) / x.detach().norm(dim=-1), rtol=1e-4, atol=0)
    assert not torch.allclose(x.grad, g)
    q = vq(dim=6, codebook_size=16, rotation_trick=True)
    q.embedding.weight.data.normal_()
    z = torch.randn(3, 10, 6, requires_grad=True)
    q.train()(z).z_q.sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_factorized_codebook_dim_projects():
    q = vq(dim=32, codebook_dim=8, codebook_size=64, l2_normalize=True)
    assert {"project_in.weight", "project_out.weight", "embedding.weight"} <= set(q.state_dict())
    assert q.embedding.weight.shape == (64, 8)
    z = torch.randn(2, 10, 32)
    assert q.eval()(z).z_q.shape == z.shape


def test_vq_perturb_picks_among_nearest_codes():
    q = vq(dim=4, codebook_size=64)
    q.embedding.weight.data.normal_()
    codes = torch.arange(64).reshape(1, 64, 1).repeat(50, 1, 1)
    new = q.perturb(codes, 1.0, strength=3, generator=torch.Generator().manual_seed(0))
    top3 = topk_nearest(q.embedding.weight, q.embedding.weight, 3)
    assert bool((new[..., 0].unsqueeze(-1) == top3[codes[..., 0]]).any(-1).all())
    assert torch.equal(q.perturb(codes, 1.0, strength=1), codes)  # the nearest code is itself


def test_ema_stats_all_reduced_when_group_initialised_after_construction(tmp_path, monkeypatch):
    import torch.distributed as dist

    z = clustered(n_clusters=16, per=8)
    kw = dict(dim=8, codebook_size=16, ema=True, dead_code_threshold=0.2, kmeans_init=True)
    torch.manual_seed(0)
    q_dist = vq(**kw)  # built before the process group exists
    torch.manual_seed(0)
    q_ref = vq(**kw)
    calls = {"all_reduce": 0, "broadcast": 0}
    real_ar, real_bc = dist.all_reduce, dist.broadcast

    def spy_ar(t, *a, **k):
        calls["all_reduce"] += 1
        return real_ar(t, *a, **k)

    def spy_bc(t, *a, **k):
        calls["broadcast"] += 1
        return real_bc(t, *a, **k)

    monkeypatch.setattr(dist, "all_reduce", spy_ar)
    monkeypatch.setattr(dist, "broadcast", spy_bc)
    torch.manual_seed(1)
    q_ref.train()(z)
    assert calls == {"all_reduce": 0, "broadcast": 0}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        torch.manual_seed(1)
        q_dist.train()(z)
    finally:
        dist.destroy_process_group()
    assert calls["all_reduce"] >= 2 and calls["broadcast"] >= 2
    for k, v in q_ref.state_dict().items():
        torch.testing.assert_close(q_dist.state_dict()[k], v)


# ---------------------------------------------------------------- RVQ
def rvq(**kw):
    return build_quantizer(QuantizerConfig(type="rvq", **kw))


def test_rvq_prefix_decode_refines_coarse_to_fine():
    z = torch.randn(4, 128, 8)
    q = rvq(dim=8, codebook_size=32, num_quantizers=4, kmeans_iters=5).calibrate([z]).eval()
    assert q.layout.radices == (32,) * 4 and q.layout.kind == "rvq" and q.layout.residual
    codes = q.encode(z)
    with torch.no_grad():
        errs = [float((q.decode(codes, depth=d) - z).square().mean()) for d in range(1, 5)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert torch.equal(q.decode(codes[..., :2]), q.decode(codes, depth=2))
    assert torch.equal(q.decode(codes), q(z).z_q)
    with pytest.raises(ValueError, match="depth"):
        q.decode(codes, depth=5)
    with pytest.raises(ValueError, match="levels"):
        q.decode(torch.cat([codes, codes], -1))


def test_rvq_losses_sum_over_levels_and_dropout_trains_a_prefix():
    z = torch.randn(2, 64, 8)
    q = rvq(dim=8, codebook_size=16, num_quantizers=3, quantizer_dropout=1.0)
    for lvl in q.levels:
        lvl.embedding.weight.data.normal_()
    q.train()
    seen = set()
    for _ in range(20):
        out = q(z)
        seen.add(int(out.stats["active_levels"]))
        assert torch.equal(out.codes, q.encode(z))  # dropped levels still get their codes
    assert len(seen) >= 2 and seen <= {1, 2, 3}
    q.config.quantizer_dropout = 0.0
    out = q(z)
    # by hand: each level on the residual of the previous ones
    res, total = z.reshape(-1, 8), 0.0
    for lvl in q.levels:
        e = lvl.embedding.weight[lvl.nearest(res)]
        total = total + 1.25 * F.mse_loss(res, e)
        res = res - e
    torch.testing.assert_close(out.losses["total"], total)


def test_rvq_perturb_keeps_coarse_level():
    q = rvq(dim=8, codebook_size=16, num_quantizers=3)
    for lvl in q.levels:
        lvl.embedding.weight.data.normal_()
    codes = q.encode(torch.randn(4, 100, 8))
    new = q.perturb(codes, 1.0, strength=4)
    assert torch.equal(new[..., 0], codes[..., 0])
    assert bool((new[..., 1:] != codes[..., 1:]).any())


@pytest.mark.parametrize("shape", [(5, 12), (4096, 12), (3, 7, 256), (2, 0, 4)])
def test_l2_normalize_is_bitwise_f_normalize(shape):
    from visualtok.quantize.search import l2_normalize

    x = torch.randn(shape) * 3
    if x.numel():
        x[0, ...] = 0  # zero rows: divided by eps, as F.normalize does
    assert torch.equal(l2_normalize(x), torch.nn.functional.normalize(x, dim=-1))
    assert torch.equal(l2_normalize(x * 1e-7, eps=1e-6),  # rotate_to's eps
                       torch.nn.functional.normalize(x * 1e-7, dim=-1, eps=1e-6))
