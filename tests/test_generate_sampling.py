"""Sampling primitives: top-k / top-p as specified, CFG formula and schedules, seeding."""

from __future__ import annotations

import math

import pytest
import torch

from visualtok.generate.sampling import (
    SamplingConfig,
    apply_cfg,
    cfg_scale_at,
    filter_logits,
    sample_from_logits,
)

# probabilities 0.05, 0.5, 0.15, 0.3 in a shuffled order
PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
LOGITS = PROBS.log()


pytestmark = pytest.mark.usefixtures("one_thread")


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


def test_top_k_keeps_the_k_largest():
    assert kept(filter_logits(LOGITS, top_k=2)) == {1, 3}
    assert kept(filter_logits(LOGITS, top_k=1)) == {1}
    assert kept(filter_logits(LOGITS, top_k=10)) == {0, 1, 2, 3}
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert kept(filter_logits(ties, top_k=1)) == {1, 2}  # ties with the k-th value are kept


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.3, {1}),  # top token alone already reaches p
        (0.5, {1}),  # cumulative 0.5 >= 0.5: smallest set
        (0.51, {1, 3}),
        (0.8, {1, 3}),  # 0.5 + 0.3 = 0.8 >= 0.8
        (0.81, {1, 3, 2}),
        (0.96, {0, 1, 2, 3}),
        (1e-6, {1}),  # the top token is always kept
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(filter_logits(LOGITS, top_p=p)) == expected


def test_top_k_then_top_p_and_sampled_frequencies():
    logits = LOGITS.expand(20000, 4)
    cfg = SamplingConfig(top_k=3, top_p=0.7)  # top-3 renormalised: .5/.95, .3/.95 -> {1, 3}
    ids, logprob = sample_from_logits(logits, cfg, torch.Generator().manual_seed(0))
    assert set(ids.tolist()) == {1, 3}
    freq1 = (ids == 1).float().mean().item()
    assert abs(freq1 - 0.5 / 0.8) < 0.015
    torch.testing.assert_close(logprob[ids == 1][0], torch.tensor(math.log(0.5)))
    ids, _ = sample_from_logits(logits, SamplingConfig(), torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4).float() / ids.numel()
    torch.testing.assert_close(freq, PROBS[0], atol=0.015, rtol=0)


def test_temperature_and_greedy():
    logits = LOGITS.expand(20000, 4)
    ids, _ = sample_from_logits(
        logits, SamplingConfig(temperature=0.5), torch.Generator().manual_seed(0)
    )
    sharp = PROBS[0] ** 2 / (PROBS[0] ** 2).sum()
    freq = torch.bincount(ids, minlength=4).float() / ids.numel()
    torch.testing.assert_close(freq, sharp, atol=0.015, rtol=0)
    ids, _ = sample_from_logits(logits[:3], SamplingConfig(temperature=0))
    assert ids.tolist() == [1, 1, 1]


def test_sampling_reproducible_under_a_seed():
    logits = torch.randn(64, 100)
    cfg = SamplingConfig(top_k=20, top_p=0.9)
    a = sample_from_logits(logits, cfg, torch.Generator().manual_seed(5))[0]
    b = sample_from_logits(logits, cfg, torch.Generator().manual_seed(5))[0]
    c = sample_from_logits(logits, cfg, torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cfg_formula_is_uncond_plus_scale_times_difference():
    cond, uncond = torch.randn(8, 50), torch.randn(8, 50)
    assert torch.equal(apply_cfg(cond, uncond, 1.0), cond)  # bit for bit
    torch.testing.assert_close(apply_cfg(cond, uncond, 2.5), uncond + 2.5 * (cond - uncond))
    torch.testing.assert_close(apply_cfg(cond, uncond, 0.0), uncond)
    masked = cond.clone()
    masked[:, -3:] = float("-inf")
    out = apply_cfg(masked, uncond.masked_fill(torch.isinf(masked), float("-inf")), 3.0)
    assert torch.isneginf(out[:, -3:]).all() and torch.isfinite(out[:, :-3]).all()


def test_cfg_schedules_and_interval():
    const = SamplingConfig(cfg_scale=4.0)
    assert [cfg_scale_at(t, 5, const) for t in range(5)] == [4.0] * 5
    lin = SamplingConfig(cfg_scale=4.0, cfg_schedule="linear")
    assert [cfg_scale_at(t, 5, lin) for t in range(5)] == [1.0, 1.75, 2.5, 3.25, 4.0]
    pc = SamplingConfig(cfg_scale=3.0, cfg_schedule="power-cosine", cfg_power=2.0)
    vals = [cfg_scale_at(t, 5, pc) for t in range(5)]
    assert vals[0] == pytest.approx(1.0) and vals[-1] == pytest.approx(3.0)
    assert vals[2] == pytest.approx(1 + 2 * (1 - math.cos(math.pi * 0.25)) / 2)
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    window = SamplingConfig(cfg_scale=2.0, cfg_interval=(0.25, 0.75))
    assert [cfg_scale_at(t, 5, window) for t in range(5)] == [1.0, 2.0, 2.0, 2.0, 1.0]
    assert cfg_scale_at(3, 5, SamplingConfig()) == 1.0  # no CFG


def test_bad_sampling_options():
    for bad in (
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(temperature=-1.0),
        dict(cfg_schedule="cosine"),
        dict(cfg_interval=(0.8, 0.2)),
    ):
        with pytest.raises(ValueError):
            SamplingConfig(**bad).validate()
