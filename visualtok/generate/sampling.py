"""Token sampling: temperature, top-k, top-p, classifier-free guidance (CFG) and its schedules.

One CFG convention everywhere: ``guided = uncond + s * (cond - uncond)``, computed with
``torch.lerp(uncond, cond, s)``: that formula, returning ``cond`` bit for bit at ``s = 1``.
Guidance is applied to raw logits, before temperature and filtering.

Filtering order (as LlamaGen): logits / temperature -> top-k -> top-p -> softmax -> sample.

* top-k keeps the ``k`` largest logits (ties with the k-th value are kept);
* top-p keeps the smallest set of most probable tokens whose cumulative probability is ``>= p``,
  and always keeps the most probable token.

Schedules give the CFG scale at step ``t`` of ``T`` through progress ``r = t / (T - 1)`` in [0, 1]:
``constant`` (``s``), ``linear`` (``1 + (s - 1) r``) and ``power-cosine``
(``1 + (s - 1) (1 - cos(pi r^power)) / 2``). Outside ``cfg_interval`` (a range of progress ``r``)
the scale is 1, i.e. plain conditional logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from ..config import Config, NonNegativeFloat, NonNegativeInt, PositiveFloat, Range, UnitFloat

__all__ = [
    "SamplingConfig",
    "CFG_SCHEDULES",
    "cfg_scale_at",
    "apply_cfg",
    "filter_logits",
    "sample_from_logits",
]

CFG_SCHEDULES = ("constant", "linear", "power-cosine")


@dataclass
class SamplingConfig(Config):
    """How to turn logits into tokens (shared by the AR and the MaskGIT samplers)."""

    temperature: NonNegativeFloat = 1.0  # logits are divided by this; 0 means greedy (argmax)
    top_k: NonNegativeInt = 0  # keep the k most likely tokens (0 = off)
    # nucleus: smallest set with cumulative probability >= p (1.0 = off)
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    cfg_scale: NonNegativeFloat | None = (
        None  # None = no CFG (no unconditional pass); 1.0 = CFG path, no change
    )
    # constant | linear | power-cosine
    cfg_schedule: Literal["constant", "linear", "power-cosine"] = "constant"
    cfg_power: PositiveFloat = 1.0  # exponent of the power-cosine schedule
    cfg_interval: tuple[UnitFloat, UnitFloat] = (0.0, 1.0)  # guide only for progress r in [lo, hi]

    def validate(self) -> SamplingConfig:
        super().validate()
        lo, hi = self.cfg_interval
        if not lo <= hi:
            raise ValueError(
                f"SamplingConfig.cfg_interval must be (lo, hi) with 0 <= lo <= hi <= 1; "
                f"got {self.cfg_interval}"
            )
        return self

    @property
    def guided(self) -> bool:
        """True when an unconditional pass is run (CFG path), whatever the scale."""
        return self.cfg_scale is not None


def cfg_scale_at(step: int, num_steps: int, config: SamplingConfig) -> float:
    """The CFG scale used at ``step`` (0-based) of ``num_steps``; 1.0 outside ``cfg_interval``."""
    if config.cfg_scale is None:
        return 1.0
    r = step / max(num_steps - 1, 1)
    lo, hi = config.cfg_interval
    if not lo <= r <= hi:
        return 1.0
    s = config.cfg_scale
    if config.cfg_schedule == "constant":
        return s
    if config.cfg_schedule == "linear":
        return 1.0 + (s - 1.0) * r
    return 1.0 + (s - 1.0) * (1.0 - math.cos(math.pi * r**config.cfg_power)) / 2.0


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` (exactly ``cond`` at ``scale == 1``).

    Entries that are ``-inf`` in ``cond`` (invalid codes of a factor) stay ``-inf``.
    """
    return torch.lerp(uncond, cond, scale).masked_fill(torch.isneginf(cond), float("-inf"))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set filtered-out entries of ``logits [..., V]`` to ``-inf`` (top-k, then top-p)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an integer >= 0 (0 = off); got {top_k!r}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and top_p in (0, 1]; got top_k={top_k}, top_p={top_p}")
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.float().softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass strictly ahead of each token
        drop_sorted = before >= top_p  # the top token has before == 0 < p: always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one index per row of ``logits [M, V]``.

    Returns ``(ids [M], logprob [M])`` where ``logprob`` is the log-probability of the sampled index
    under the tempered, unfiltered distribution (MaskGIT uses it as confidence).
    """
    logits = logits.float()
    if config.temperature == 0:
        ids = logits.argmax(-1)
        return ids, torch.zeros_like(ids, dtype=torch.float32)
    logits = logits / config.temperature
    logprobs = logits.log_softmax(-1)
    filtered = filter_logits(logits, config.top_k, config.top_p)
    probs = filtered.softmax(-1)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids, logprobs.gather(-1, ids[:, None]).squeeze(-1)
