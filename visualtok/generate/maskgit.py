"""MaskGIT parallel decoding over a bidirectional GPT (``GPTConfig(causal=False)``).

MaskGIT (Chang et al. 2022), as TiTok's generator uses it: training masks a random fraction
``gamma(r)`` of the tokens (``r ~ U(0, 1)``) and predicts them; sampling starts from all-mask and,
over ``T`` steps, samples every masked token, then re-masks the ``floor(N * gamma((t+1)/T))`` least
confident ones. Confidence is the log-probability of the sampled code plus Gumbel noise scaled by
``choice_temperature * (1 - (t+1)/T)`` (annealed to 0). CFG follows the same contract as the AR
sampler: ``uncond + s * (cond - uncond)`` on the logits, scale from ``cfg_scale_at``.

Schedules ``gamma``: ``cosine`` ``cos(pi/2 r)``, ``arccos`` ``arccos(r) / (pi/2)``,
``linear`` ``1 - r``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import NonNegativeFloat, PositiveInt, check_value
from .autoregressive import prepare_labels, resolve_sampling
from .sampling import SamplingConfig, cfg_scale_at

__all__ = ["MASK_SCHEDULES", "mask_ratio", "random_mask", "generate_maskgit"]

MASK_SCHEDULES = ("cosine", "arccos", "linear")


def mask_ratio(r: float | torch.Tensor, schedule: str = "arccos") -> float | torch.Tensor:
    """Fraction of tokens still masked at progress ``r`` in [0, 1] (1 at r=0, 0 at r=1)."""
    lib = torch if isinstance(r, torch.Tensor) else math
    if schedule == "cosine":
        return lib.cos(math.pi / 2 * r)
    if schedule == "arccos":
        return (torch.arccos(r) if lib is torch else math.acos(r)) / (math.pi / 2)
    if schedule == "linear":
        return 1 - r
    raise ValueError(f"mask schedule must be one of {MASK_SCHEDULES}; got {schedule!r}")


def random_mask(
    batch_size: int,
    num_tokens: int,
    schedule: str = "arccos",
    generator: torch.Generator | None = None,
    device: Any = None,
) -> torch.Tensor:
    """Training mask ``[B, N]`` (True = masked): ``ceil(N * gamma(r))`` random tokens, >= 1."""
    r = torch.rand(batch_size, generator=generator, device=device)
    n = (num_tokens * mask_ratio(r, schedule)).ceil().clamp(1, num_tokens)
    order = torch.rand(batch_size, num_tokens, generator=generator, device=device).argsort(-1)
    ranks = order.argsort(-1)  # a random permutation rank per token
    return ranks < n[:, None]


@torch.no_grad()
def generate_maskgit(
    model,
    labels: Any = None,
    num_samples: int | None = None,
    num_steps: int = 8,
    schedule: str = "arccos",
    choice_temperature: float = 4.5,
    sampling: SamplingConfig | dict | None = None,
    generator: torch.Generator | None = None,
    **sampling_kwargs: Any,
) -> torch.Tensor:
    """Sample codes ``[B, N, F]`` from a bidirectional GPT in ``num_steps`` parallel steps."""
    if model.config.causal:
        raise ValueError("generate_maskgit needs a bidirectional GPT (causal=False)")
    num_steps = check_value(PositiveInt, num_steps, "num_steps")
    choice_temperature = check_value(NonNegativeFloat, choice_temperature, "choice_temperature")
    mask_ratio(0.5, schedule)  # validates the name
    cfg = resolve_sampling(sampling, **sampling_kwargs)
    labels, B = prepare_labels(model, labels, num_samples, cfg.guided)
    N, nf = model.config.num_tokens, model.layout.num_factors
    dev = model.class_embedding.weight.device
    codes = torch.zeros(B, N, nf, dtype=torch.long, device=dev)
    masked = torch.ones(B, N, dtype=torch.bool, device=dev)
    for t in range(num_steps):
        c_in, m_in = (
            (torch.cat([codes, codes]), torch.cat([masked, masked]))
            if cfg.guided
            else (codes, masked)
        )
        h = model.hidden_states(c_in, labels, mask=m_in)  # [Bt, N, D]
        h_c, h_u = (h[:B], h[B:]) if cfg.guided else (h, None)
        flat = lambda x: None if x is None else x.reshape(B * N, -1)  # noqa: E731
        new, logprob = model.head.sample(
            flat(h_c), flat(h_u), cfg_scale_at(t, num_steps, cfg), cfg, generator
        )
        new, logprob = new.view(B, N, nf), logprob.view(B, N)
        codes = torch.where(masked[..., None], new, codes)
        r = (t + 1) / num_steps
        remaining = int(masked[0].sum())
        n_mask = (
            0
            if t == num_steps - 1
            else max(1, min(math.floor(N * mask_ratio(r, schedule)), remaining - 1))
        )
        if n_mask == 0 or remaining <= 1:
            masked = torch.zeros_like(masked)
            continue
        u = torch.rand(B, N, generator=generator, device=dev).clamp_(1e-20, 1 - 1e-7)
        gumbel = -torch.log(-torch.log(u))
        conf = logprob + choice_temperature * (1 - r) * gumbel
        conf = conf.masked_fill(~masked, float("inf"))  # decided tokens stay decided
        idx = conf.topk(n_mask, dim=-1, largest=False).indices
        masked = torch.zeros_like(masked).scatter_(1, idx, True)
    return codes
