"""MusicGen's delay pattern for residual (RVQ) codes ``[B, T, K]``.

Level ``k`` is shifted ``k`` steps later: delayed position ``t`` holds frame ``t - k`` of level
``k``, so a GPT step predicts level ``k`` of frame ``t - k`` after it has seen levels ``< k`` of
that frame at earlier steps (coarse levels condition fine ones without a per-level sequence). The
``T + K - 1`` delayed steps have a pad symbol where ``t - k`` is outside ``[0, T)``; the pad of
level ``k`` is its radix (one extra symbol per level). Round trip: ``undelay(delay(c)) == c``.
"""

from __future__ import annotations

import torch

__all__ = ["delay_codes", "undelay_codes", "delay_valid"]


def delay_valid(num_steps: int, num_levels: int, num_frames: int,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``[num_steps, K]`` bool: True where step ``t`` of level ``k`` holds a real frame."""
    t = torch.arange(num_steps, device=device)[:, None]
    f = t - torch.arange(num_levels, device=device)[None, :]
    return (f >= 0) & (f < num_frames)


def delay_codes(codes: torch.Tensor, pads: torch.Tensor | list[int]) -> torch.Tensor:
    """``[B, T, K]`` -> ``[B, T + K - 1, K]``: level ``k`` shifted by ``k``, ``pads[k]`` around."""
    if codes.ndim != 3:
        raise ValueError(f"delay_codes needs codes [B, T, K]; got shape {tuple(codes.shape)}")
    B, T, K = codes.shape
    pads = torch.as_tensor(pads, dtype=codes.dtype, device=codes.device)
    if pads.shape != (K,):
        raise ValueError(f"delay_codes needs one pad per level ({K}); got {tuple(pads.shape)}")
    out = pads.expand(B, T + K - 1, K).clone()
    for k in range(K):
        out[:, k : k + T, k] = codes[:, :, k]
    return out


def undelay_codes(delayed: torch.Tensor) -> torch.Tensor:
    """``[B, T + K - 1, K]`` -> ``[B, T, K]`` (the inverse of ``delay_codes``)."""
    if delayed.ndim != 3 or delayed.shape[1] < delayed.shape[2]:
        raise ValueError(f"undelay_codes needs delayed codes [B, T + K - 1, K] with T >= 1; "
                         f"got shape {tuple(delayed.shape)}")
    B, S, K = delayed.shape
    T = S - K + 1
    return torch.stack([delayed[:, k : k + T, k] for k in range(K)], -1)
