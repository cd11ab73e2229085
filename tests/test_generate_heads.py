"""Each head learns a known code distribution; the causal per-factor head captures correlations
between factors that independent per-factor softmaxes cannot (NLL against the true entropy)."""

from __future__ import annotations

import math

import pytest
import torch

from visualtok.generate.heads import BitHead, FactorHead, FlatHead
from visualtok.generate.sampling import SamplingConfig
from visualtok.quantize.layout import CodeLayout

D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def fit(
    head: torch.nn.Module, sampler, steps: int = 200, batch: int = 512, lr: float = 1e-2
) -> float:
    """Train ``head`` on a context-free task (constant state ``h``); return the final NLL (nats)."""
    torch.manual_seed(0)
    h = torch.randn(1, D)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)  # decay: less noise
    for _ in range(steps):
        loss = head.nll(h.expand(batch, D), sampler(batch)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return head.nll(h.expand(8192, D), sampler(8192)).mean().item()


def correlated_pairs(n: int) -> torch.Tensor:
    """Two factors of radix 4: c0 uniform, c1 = c0 w.p. 0.85 else uniform over the other 3."""
    c0 = torch.randint(0, 4, (n,))
    other = (c0 + torch.randint(1, 4, (n,))) % 4
    c1 = torch.where(torch.rand(n) < 0.85, c0, other)
    return torch.stack([c0, c1], -1)


def entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_factor_head_learns_correlated_factors_independent_softmaxes_cannot():
    layout = CodeLayout((4, 4), "ptq")
    true_h = math.log(4) + entropy([0.85, 0.05, 0.05, 0.05])  # H(c0) + H(c1 | c0)
    independent_floor = 2 * math.log(4)  # both marginals are uniform
    causal = FactorHead(D, layout, width=32, depth=1, num_heads=2, autoregressive=True)
    indep = FactorHead(D, layout, width=32, depth=1, num_heads=2, autoregressive=False)
    nll_causal, nll_indep = fit(causal, correlated_pairs), fit(indep, correlated_pairs)
    assert abs(nll_causal - true_h) < 0.05, (nll_causal, true_h)
    assert nll_indep > independent_floor - 0.03, (nll_indep, independent_floor)
    assert nll_indep - nll_causal > 0.7  # the gap is the mutual information, ~0.80 nats
    # sampling recovers the joint: P(c1 == c0) ~ 0.85 for the causal head, ~0.25 independent
    torch.manual_seed(0)
    h = torch.randn(1, D)  # the same state fit() trained on
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        codes, _ = causal.sample(h.expand(8000, D), None, 1.0, SamplingConfig(), g)
        same = (codes[:, 0] == codes[:, 1]).float().mean().item()
        codes_i, _ = indep.sample(h.expand(8000, D), None, 1.0, SamplingConfig(), g)
        same_i = (codes_i[:, 0] == codes_i[:, 1]).float().mean().item()
    assert abs(same - 0.85) < 0.03 and abs(same_i - 0.25) < 0.03


def test_factor_head_handles_mixed_radices():
    layout = CodeLayout((3, 5), "fsq")  # FSQ-style unequal levels: invalid entries masked
    probs = torch.tensor([0.6, 0.3, 0.1])

    def sampler(n):
        c0 = torch.multinomial(probs, n, replacement=True)
        c1 = (2 * c0 + torch.randint(0, 2, (n,))) % 5  # two equally likely values given c0
        return torch.stack([c0, c1], -1)

    head = FactorHead(D, layout, width=32, depth=1, num_heads=2)
    nll = fit(head, sampler)
    assert abs(nll - (entropy(probs.tolist()) + math.log(2))) < 0.05
    with torch.no_grad():
        codes, _ = head.sample(torch.randn(64, D), None, 1.0, SamplingConfig(), None)
    assert codes[:, 0].max() < 3 and codes[:, 1].max() < 5


def test_flat_head_learns_a_categorical():
    layout = CodeLayout((16,))
    probs = torch.softmax(torch.randn(16, generator=torch.Generator().manual_seed(2)) * 1.5, 0)

    def sampler(n):
        return torch.multinomial(probs, n, replacement=True)[:, None]

    head = FlatHead(D, layout)
    nll = fit(head, sampler, lr=5e-2)
    assert abs(nll - entropy(probs.tolist())) < 0.04


def test_bit_head_learns_independent_bits_of_grouped_binary_codes():
    layout = CodeLayout((4, 4, 4), "lfq")  # 6 bits in groups of 2
    p_bits = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.05, 0.6])
    head = BitHead(D, layout)

    def sampler(n):
        bits = (torch.rand(n, 6) < p_bits).long()
        return head.from_bits(bits)

    codes = sampler(5)
    assert torch.equal(head.from_bits(head.to_bits(codes)), codes)  # little-endian round trip
    assert torch.equal(head.to_bits(torch.tensor([[1, 2, 3]])), torch.tensor([[1, 0, 0, 1, 1, 1]]))
    nll = fit(head, sampler, lr=5e-2)
    true_h = sum(entropy([p, 1 - p]) for p in p_bits.tolist())
    assert abs(nll - true_h) < 0.04
    torch.manual_seed(0)
    h = torch.randn(1, D)
    with torch.no_grad():
        samples, _ = head.sample(
            h.expand(8000, D), None, 1.0, SamplingConfig(), torch.Generator().manual_seed(0)
        )
    freq = head.to_bits(samples).float().mean(0)
    torch.testing.assert_close(freq, p_bits, atol=0.03, rtol=0)
