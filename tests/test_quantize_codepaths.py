"""The accelerator code paths of the quantizer core, run on CPU tensors
(``codepaths.accelerator_paths_on_cpu``): same results as the CPU paths, no host syncs, and
checks that still fire (asynchronously). Also ``benchmarks/count_quantizer_ops.py`` on a tiny
setting."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks import count_quantizer_ops as cqo
from visualtok.quantize import LazyStats, QuantizerConfig, build_quantizer, codepaths
from visualtok.quantize.search import nearest_code, topk_nearest
from visualtok.quantize.vq import VectorQuantizer

FAMILIES = {
    "vq": dict(type="vq", dim=8, codebook_size=64),
    "vq_cosine_ema": dict(type="vq", dim=12, codebook_size=256, l2_normalize=True, ema=True),
    "vq_dead_rotation": dict(type="vq", dim=16, codebook_dim=8, codebook_size=64,
                             dead_code_threshold=0.1, rotation_trick=True),
    "lfq": dict(type="lfq", dim=16, group_size=4),
    "fsq": dict(type="fsq", dim=6, levels=(8, 8, 8, 5, 5, 5)),
    "rvq": dict(type="rvq", dim=8, codebook_size=32, num_quantizers=3, ema=True),
    "ptq": dict(type="ptq", dim=6, bins=16),
}


def make(name: str):
    torch.manual_seed(0)
    q = build_quantizer(QuantizerConfig(**FAMILIES[name]))
    for m in q.modules():  # spread-out codebooks so codes are informative
        if isinstance(m, VectorQuantizer):
            m.embedding.weight.data.normal_()
            if hasattr(m, "embed_avg"):
                m.embed_avg.copy_(m.embedding.weight)
    return q


@pytest.mark.parametrize("k", [7, 300, 1500, 4096])
@pytest.mark.parametrize("n", [1, 200, 1000])
def test_search_paths_give_the_same_codes(k, n):
    x, cb = torch.randn(n, 6), torch.randn(k, 6)
    dense = torch.cdist(x, cb).argmin(1)
    tiled = nearest_code(x, cb)
    with codepaths.accelerator_paths_on_cpu():
        one_pass = nearest_code(x, cb)
        chunked = nearest_code(x, cb, chunk_size=64, max_elements=5 * k)  # 5-row chunks
        row_chunks = nearest_code(x, cb, chunk_size=33)  # fits: one pass regardless
    assert torch.equal(tiled, dense)
    assert torch.equal(one_pass, tiled) and torch.equal(chunked, tiled)
    assert torch.equal(row_chunks, tiled)


def test_search_keeps_the_first_index_on_exact_ties():
    cb = torch.randn(3000, 4)
    cb[2100] = cb[5]  # duplicate rows in different CPU column tiles
    cb[2900] = cb[5]
    x = cb[[5, 2100, 2900]] + 1e-7
    assert nearest_code(x, cb).tolist() == [5, 5, 5]
    with codepaths.accelerator_paths_on_cpu():
        assert nearest_code(x, cb).tolist() == [5, 5, 5]
        assert nearest_code(x, cb, max_elements=3000).tolist() == [5, 5, 5]


def test_topk_one_pass_and_chunked_agree():
    x, cb = torch.randn(100, 5), torch.randn(50, 5)
    ref = torch.cdist(x, cb).topk(4, largest=False).indices
    assert torch.equal(topk_nearest(x, cb, 4), ref)
    assert torch.equal(topk_nearest(x, cb, 4, chunk_size=16), ref)


@pytest.mark.parametrize("name", FAMILIES)
def test_accelerator_paths_match_cpu_paths(name):
    z = torch.randn(4, 40, FAMILIES[name]["dim"]) * 1.5
    outs = {}
    for path in ("cpu", "accelerator"):
        q = make(name)
        ctx = codepaths.accelerator_paths_on_cpu() if path == "accelerator" else _null()
        with ctx:
            zt = z.clone().requires_grad_(True)
            train = q.train()(zt)
            (train.z_q.square().mean() + train.losses["total"]).backward()
            ev = q.eval()(z)
            decoded = q.decode(ev.codes)
        outs[path] = (train, zt.grad, ev, decoded, q.state_dict())
    (t0, g0, e0, _, s0), (t1, g1, e1, d1, s1) = outs["cpu"], outs["accelerator"]
    assert torch.equal(t0.codes, t1.codes) and torch.equal(e0.codes, e1.codes)
    torch.testing.assert_close(t1.z_q, t0.z_q)
    torch.testing.assert_close(g1, g0)
    assert torch.equal(e1.z_q, e0.z_q) and torch.equal(d1, e1.z_q)
    assert set(t0.losses) == set(t1.losses) and set(t0.stats) == set(t1.stats)
    for k in t0.losses:
        torch.testing.assert_close(t1.losses[k], t0.losses[k])
    for k in t0.stats:
        torch.testing.assert_close(t1.stats[k], t0.stats[k])
    for k in s0:
        torch.testing.assert_close(s1[k], s0[k])


def _null():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("name", FAMILIES)
def test_accelerator_checks_async_in_training_exact_for_api_calls(name):
    q = make(name).eval()
    d = q.dim
    codes = q.encode(torch.randn(2, 3, d))
    with codepaths.accelerator_paths_on_cpu():
        for bad in (float("nan"), float("inf"), -float("inf")):
            z = torch.randn(2, 3, d)
            z[1, 2, 0] = bad
            # a training step (autograd history): queued on the device, no host read
            with pytest.raises(RuntimeError, match="NaN or inf"):  # torch._assert_async
                q(z.requires_grad_())
            # a user's inference call: the exact, recoverable error
            with pytest.raises(ValueError, match="NaN or inf"):
                q(z.detach())
        z = torch.full((2, 3, d), 3e38)  # finite, whose sum overflows: not an error
        q(z)
        q(z.requires_grad_())
        # codes come from users: always the exact error
        with pytest.raises(ValueError, match="out of range: factor"):
            q.decode(codes + torch.tensor(q.layout.radices))
        with pytest.raises(ValueError, match="out of range: factor"):
            q.decode(codes - 100)
        assert torch.equal(q.decode(codes), q.decode(codes.int()))  # in range: fine
        # shape / dtype errors stay exact and immediate
        with pytest.raises(ValueError, match="channels last"):
            q(torch.randn(2, 3, d + 1))
        with pytest.raises(TypeError, match="integer"):
            q.decode(codes.float())
        previous = codepaths.set_exact_checks(True)
        try:
            z = torch.randn(2, 3, d)
            z[0, 0, 0] = float("nan")
            with pytest.raises(ValueError, match="NaN or inf"):
                q(z.requires_grad_())
        finally:
            codepaths.set_exact_checks(previous)


def test_cpu_checks_stay_exact_value_errors():
    q = make("fsq").eval()
    z = torch.randn(2, 3, 6)
    z[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        q(z)
    with pytest.raises(ValueError, match=r"out of range: factor 3 must be in \[0, 5\)"):
        q.decode(torch.tensor([[[0, 0, 0, 5, 0, 0]]]))


def test_vq_batch_stats_are_the_code_histogram_entropy():
    q = make("vq_cosine_ema").eval()
    out = q(torch.randn(3, 50, 12))
    hist = torch.bincount(out.codes.reshape(-1), minlength=256).double()
    p = hist[hist > 0] / hist.sum()
    assert math.isclose(float(out.stats["perplexity"]), math.exp(float(-(p * p.log()).sum())),
                        rel_tol=1e-5)
    assert math.isclose(float(out.stats["usage"]), float((hist > 0).double().mean()),
                        rel_tol=1e-6)


def test_kmeans_init_reads_initted_once_and_again_after_load():
    q = build_quantizer(QuantizerConfig(type="vq", dim=4, codebook_size=8, kmeans_init=True,
                                        kmeans_iters=2))
    state = {k: v.clone() for k, v in q.state_dict().items()}  # initted False
    q.train()(torch.randn(64, 4))
    assert bool(q.initted) and q._initted_seen
    w = q.embedding.weight.detach().clone()
    q.load_state_dict(state)  # back to an uninitialised codebook: initialise again
    assert not q._initted_seen
    q.train()(torch.randn(64, 4) + 3)
    assert bool(q.initted) and not torch.equal(q.embedding.weight, w)


def _step_counts(name_or_cfg, train: bool):
    cfg = FAMILIES[name_or_cfg] if isinstance(name_or_cfg, str) else name_or_cfg
    q = build_quantizer(QuantizerConfig(**cfg))
    z = torch.randn(4, 64, cfg["dim"], requires_grad=True)
    with codepaths.accelerator_paths_on_cpu():
        if train:
            q.train()
            return cqo.count(cqo.ours_step(q, z), as_cuda=True)
        q.eval()

        def infer():
            with torch.no_grad():
                q(z.detach())

        return cqo.count(infer, as_cuda=True)


@pytest.mark.parametrize("setting", ["VQ cosine EMA 4096x12", "FSQ [8,8,8,5,5,5]",
                                     "RVQ EMA 8x1024x128", "LFQ 2^14 (g=7)"])
@pytest.mark.parametrize("train", [True, False])
def test_bench_settings_host_syncs_on_the_accelerator_path(setting, train):
    """A training step reads nothing back; an inference call never stalls the queue either: it
    reads one value at its end, the deferred input check."""
    counter = _step_counts(cqo.SETTINGS[setting][0], train)
    assert sum(counter.syncs.values()) == 0, dict(counter.syncs)
    assert sum(counter.deferred.values()) == (0 if train else 1), dict(counter.deferred)
    assert sum(counter.ops.values()) > 0


def test_op_counter_sees_host_reads_and_views():
    x = torch.randn(8, 4)

    def fn():
        y = x.view(4, 8).t()  # views: not counted
        _ = float(y.sum())  # one op + one sync
        _ = x[x > 0]  # gt + boolean indexing (a sync)
        _ = x.tolist()  # a host read that dispatches nothing on CPU
        _ = F.one_hot(torch.tensor([1, 2]), 4)  # CPU-only range checks left out as_cuda

    c = cqo.count(fn, as_cuda=True)
    assert c.syncs["aten._local_scalar_dense.default"] == 1
    assert c.syncs["aten.index.Tensor"] == 1 and c.syncs["Tensor.tolist"] == 1
    assert "aten.view.default" not in c.ops and "aten.t.default" not in c.ops
    assert c.cpu_only["aten._local_scalar_dense.default"] == 2
    assert c.ops["aten.scatter_.value"] == 1
    a, b = torch.randn(256), torch.randn(256)
    assert cqo.count(lambda: torch.add(a, b)).bytes_moved == 3 * 256 * 4  # 2 inputs + 1 output


def test_count_quantizer_ops_script_runs_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "counts.json"
    rows = cqo.main(["--tokens", "256", "--only", "VQ cosine", "--json", str(out)])
    assert [r["step"] for r in rows] == ["train", "infer"]
    for r in rows:
        assert r["ours syncs"] == 0
        assert r["ours deferred reads"] == (0 if r["step"] == "train" else 1)
        assert r["ref syncs"] >= 1 and r["ours ops"] > 0
        assert 0 < r["ours MiB moved"] < r["ref MiB moved"]  # no dense one-hot
    payload = json.loads(out.read_text())
    assert payload["path"] == "accelerator" and payload["rows"] == rows
    assert "| VQ cosine EMA 4096x12 | train |" in capsys.readouterr().out
    cpu_rows = cqo.main(["--tokens", "256", "--only", "FSQ", "--path", "cpu"])
    assert cpu_rows[0]["ours syncs"] == 1  # the exact CPU check reads one value


def test_deferred_check_raises_at_the_end_of_an_inference_call_before_results_leave():
    """Eval on the accelerator path: the NaN check is queued first and read last; the work in
    between runs, but the caller only ever sees the ValueError, and no state changes."""
    q = make("vq_cosine_ema").eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(2, 5, 12)
    z[1, 4, 7] = float("nan")
    seen = []
    hook = q.register_forward_hook(lambda *_: seen.append("returned"))
    with codepaths.accelerator_paths_on_cpu():
        with pytest.raises(ValueError, match="z contains NaN or inf values"):
            q(z)
        with pytest.raises(ValueError, match="NaN or inf"):
            q.encode(z)
        counter = cqo.count(lambda: q.encode(torch.randn(2, 5, 12)), as_cuda=True)
    hook.remove()
    assert seen == []  # raised inside forward, not after it returned
    assert sum(counter.syncs.values()) == 0 and sum(counter.deferred.values()) == 1
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_training_mode_calls_without_autograd_check_eagerly_before_state_changes():
    """A training-mode call with no autograd history updates EMA state, so its check is eager on
    the accelerator path too: bad latents never reach the codebook."""
    q = make("vq_cosine_ema").train()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(2, 5, 12)
    z[0, 0, 0] = float("inf")
    with codepaths.accelerator_paths_on_cpu(), torch.no_grad():
        assert codepaths.check_mode(z, stateless=False) == "eager"
        with pytest.raises(ValueError, match="NaN or inf"):
            q(z)
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_check_modes_per_device_and_call():
    z = torch.randn(2, 3)
    assert codepaths.check_mode(z, stateless=True) == "eager"  # CPU: always eager
    with codepaths.accelerator_paths_on_cpu():
        assert codepaths.check_mode(z, stateless=True) == "deferred"
        assert codepaths.check_mode(z, stateless=False) == "eager"
        assert codepaths.check_mode(z.requires_grad_(), stateless=False) == "async"
        with torch.no_grad():
            assert codepaths.check_mode(z, stateless=False) == "eager"
        previous = codepaths.set_exact_checks(True)
        try:
            assert codepaths.check_mode(z, stateless=True) == "eager"
            assert codepaths.check_mode(z, stateless=False) == "eager"
        finally:
            codepaths.set_exact_checks(previous)


def test_stats_are_computed_only_when_read_and_from_the_call_s_own_codes():
    q = make("vq_cosine_ema").train()
    z = torch.randn(3, 50, 12)
    out = q(z)
    assert isinstance(out.stats, LazyStats) and set(out.stats) == {"perplexity", "usage"}
    assert not any(isinstance(v, torch.Tensor) for v in out.stats._entries.values())
    q(torch.randn(3, 50, 12) * 5)  # a later step changes the codebook and its statistics
    hist = torch.bincount(out.codes.reshape(-1), minlength=256).double()
    p = hist[hist > 0] / hist.sum()
    assert math.isclose(float(out.stats["perplexity"]), math.exp(float(-(p * p.log()).sum())),
                        rel_tol=1e-5)
    assert out.stats["usage"] is out.stats["usage"]  # computed once, kept
    assert dict(out.stats).keys() == {"perplexity", "usage"}
    # the counted ops of an inference call do not include the statistics
    q.eval()
    read = cqo.count(lambda: dict(q(z).stats))
    unread = cqo.count(lambda: q(z))
    assert sum(read.ops.values()) > sum(unread.ops.values())
    assert "aten.index_add_.default" not in unread.ops
