"""Autoregressive sampling loop of the GPT: static KV cache (or none), CFG, variable length.

With CFG the batch is doubled as ``[cond; uncond]`` (uncond = the null class), both halves are fed
the same sampled tokens, and each head combines the two logits with ``apply_cfg``. The cached loop
runs one ``GPT.step`` per token on fixed shapes, so ``compile=True`` wraps it with ``torch.compile``
once; the uncached loop re-runs the whole prefix each step (the reference for exactness tests).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import check_value
from .sampling import SamplingConfig, cfg_scale_at

__all__ = ["generate_ar", "resolve_sampling"]


def resolve_sampling(sampling: SamplingConfig | dict | None, **overrides: Any) -> SamplingConfig:
    """A validated ``SamplingConfig`` from a config, a dict or keyword overrides."""
    if sampling is None:
        sampling = SamplingConfig()
    elif isinstance(sampling, dict):
        from ..config import config_from_dict

        sampling = config_from_dict(SamplingConfig, sampling)
    elif not isinstance(sampling, SamplingConfig):
        raise TypeError(
            f"sampling must be a SamplingConfig, a dict or None; got {type(sampling).__name__}"
        )
    if overrides:
        valid = {f.name for f in dataclasses.fields(SamplingConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(
                f"unknown sampling option(s) {unknown}; valid options are {sorted(valid)}"
            )
        sampling = dataclasses.replace(sampling, **overrides)
    return sampling.validate()


def prepare_labels(
    model, labels: Any, num_samples: int | None, guided: bool
) -> tuple[torch.Tensor | None, int]:
    """Validated labels (with the null class appended when ``guided``) and the batch size ``B``."""
    if num_samples is not None:
        num_samples = check_value(int, num_samples, "num_samples")
    if labels is None:
        if num_samples is None or num_samples < 1:
            raise ValueError(
                "pass labels [B] (class-conditional) or num_samples >= 1 (unconditional)"
            )
        B = num_samples
    else:
        B = len(torch.as_tensor(labels).reshape(-1))
        if num_samples is not None and num_samples != B:
            raise ValueError(f"num_samples={num_samples} disagrees with {B} labels")
    labels = model.check_labels(labels, B if labels is not None else None)
    if guided:
        if labels is None:
            raise ValueError(
                "CFG needs a class-conditional GPT (num_classes > 0); set cfg_scale=None"
            )
        labels = torch.cat([labels, torch.full_like(labels, model.null_class)])
    return labels, B


@torch.no_grad()
def generate_ar(
    model,
    labels: Any = None,
    num_samples: int | None = None,
    num_tokens: int | None = None,
    sampling: SamplingConfig | dict | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compile: bool | str = False,
    **sampling_kwargs: Any,
) -> torch.Tensor:
    """Sample codes ``[B, k, F]`` from a causal ``GPT``; ``k = num_tokens`` (default: all N)."""
    if not model.config.causal:
        raise ValueError(
            "generate_ar needs a causal GPT; use maskgit.generate_maskgit for causal=False"
        )
    cfg = resolve_sampling(sampling, **sampling_kwargs)
    k = model.config.num_tokens if num_tokens is None else num_tokens
    k = check_value(int, k, "num_tokens")
    extra = model.delay_steps  # the delay pattern runs K - 1 steps more than frames
    if not 1 <= k <= model.config.num_tokens - extra:
        raise ValueError(
            f"num_tokens must be in [1, {model.config.num_tokens - extra}] (the GPT context"
            f"{f' less {extra} delay steps' if extra else ''}); got {k}"
        )
    frames, k = k, k + extra
    labels, B = prepare_labels(model, labels, num_samples, cfg.guided)
    Bt = 2 * B if cfg.guided else B
    dev = model.class_embedding.weight.device
    nf = model.layout.num_factors
    cond = model.condition(labels, Bt)  # [Bt, 1, D]
    codes = torch.zeros(B, k, nf, dtype=torch.long, device=dev)
    banned = _delay_bans(model, k, frames, dev) if extra else None

    step = model.step
    if use_cache:
        model.setup_cache(Bt, dev, cond.dtype)
        if compile:  # compiled once per model; fixed shapes, so no recompiles across steps
            if getattr(model, "_compiled_step", None) is None:
                mode = compile if isinstance(compile, str) else None  # e.g. "reduce-overhead"
                model._compiled_step = torch.compile(model.step, dynamic=False, mode=mode)
            step = model._compiled_step
        h = step(cond, torch.zeros(1, dtype=torch.long, device=dev))[:, -1]
    for t in range(k):
        if not use_cache:
            prev = codes[:, :t]
            if cfg.guided:
                prev = torch.cat([prev, prev])
            x = torch.cat([cond, model.embed_codes(prev)], 1) if t else cond
            h = model.trunk(x)[:, -1]
        h_c, h_u = (h[:B], h[B:]) if cfg.guided else (h, None)
        ban = {} if banned is None else {"banned": banned[t]}
        new, _ = model.head.sample(h_c, h_u, cfg_scale_at(t, k, cfg), cfg, generator, **ban)
        codes[:, t] = new
        if use_cache and t + 1 < k:
            x = model.embed_codes((torch.cat([new, new]) if cfg.guided else new)[:, None])
            h = step(x, torch.full((1,), t + 1, dtype=torch.long, device=dev))[:, -1]
    if extra:
        from .delay import undelay_codes

        return undelay_codes(codes)
    return codes


def _delay_bans(model, steps: int, frames: int, device) -> torch.Tensor:
    """``[steps, K, Rmax]`` bool, True = not allowed: under the delay pattern a level's pad is
    forced outside its frames and forbidden inside them (every sample undelays to valid codes)."""
    from .delay import delay_valid

    valid = delay_valid(steps, model.layout.num_factors, frames, device)  # [S, K]
    pads = torch.tensor(model.delay_pads(), device=device)
    is_pad = torch.arange(model.step_layout.max_radix, device=device) == pads[:, None]  # [K, R]
    return torch.where(valid[..., None], is_pad, ~is_pad)
