"""Tiled nearest-neighbour search over a codebook, and the random token mask used by ``perturb``.

The search never materialises the full ``[N, K]`` distance matrix (nor a one-hot). The nearest row
of ``e`` minimises ``|e|^2 - 2 z.e`` (``|z|^2`` is constant per token), i.e. maximises the score
``z.e - |e|^2 / 2``, which one matmul of augmented matrices ``[z, 1] @ [e, -|e|^2/2]^T`` gives with
no bias copy. On CPU the scores are computed in cache-sized tiles (``rows x cols``) with a running
max over codebook tiles, which keeps small-``d`` codebooks (TiTok 4096 x 12) compute- rather than
memory-bound; on GPU in row chunks of at most ``max_elements`` scores.
"""

from __future__ import annotations

import torch

__all__ = ["nearest_code", "topk_nearest", "token_mask", "check_strength", "MAX_CHUNK_ELEMENTS"]

MAX_CHUNK_ELEMENTS = 2**24  # scores per chunk on GPU (64 MiB fp32) and for top-k
CPU_TILE_ROWS, CPU_TILE_COLS = 256, 1024  # 1 MiB of fp32 scores per tile: stays in L2


def _augment(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[z, 1]`` ``[N, d + 1]`` and ``[e, -|e|^2 / 2]^T`` ``[d + 1, K]``."""
    x_aug = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    e_aug = torch.cat([codebook, -0.5 * codebook.pow(2).sum(1, keepdim=True)], dim=1)
    return x_aug, e_aug.t().contiguous()


@torch.no_grad()
def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    chunk_size: int = 8192,
    max_elements: int = MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Index of the nearest codebook row (squared l2) for each row of ``x``.

    x: ``[N, d]``, codebook: ``[K, d]`` -> ``[N]`` int64 (the first index on exact ties).
    """
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    x_aug, e_t = _augment(x, codebook)
    if x.device.type != "cpu" or k <= CPU_TILE_COLS:
        rows = max(1, min(chunk_size, max_elements // max(k, 1)))
        if x.device.type == "cpu":
            rows = min(rows, max(CPU_TILE_ROWS, CPU_TILE_ROWS * CPU_TILE_COLS // k))
        for s in range(0, n, rows):
            out[s : s + rows] = (x_aug[s : s + rows] @ e_t).argmax(1)
        return out
    rows = min(chunk_size, CPU_TILE_ROWS)
    for s in range(0, n, rows):
        xs = x_aug[s : s + rows]
        best = torch.full((xs.shape[0],), float("-inf"), device=x.device)
        idx = torch.zeros(xs.shape[0], dtype=torch.long, device=x.device)
        for c in range(0, k, CPU_TILE_COLS):
            val, i = (xs @ e_t[:, c : c + CPU_TILE_COLS]).max(1)
            better = val > best
            best = torch.where(better, val, best)
            idx = torch.where(better, i + c, idx)
        out[s : s + rows] = idx
    return out


@torch.no_grad()
def topk_nearest(
    x: torch.Tensor,
    codebook: torch.Tensor,
    k: int,
    chunk_size: int = 8192,
    max_elements: int = MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Indices of the ``k`` nearest codebook rows, nearest first: ``[N, d]`` -> ``[N, k]`` int64."""
    n, num_codes = x.shape[0], codebook.shape[0]
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    x_aug, e_t = _augment(x, codebook)
    rows = max(1, min(chunk_size, max_elements // max(num_codes, 1)))
    for s in range(0, n, rows):
        out[s : s + rows] = (x_aug[s : s + rows] @ e_t).topk(k, dim=1).indices
    return out


def token_mask(
    shape: tuple[int, ...],
    rate: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Boolean mask, each entry True independently with probability ``rate``.

    Random numbers are drawn on the generator's device (so a CPU generator works for CUDA codes)
    and moved to ``device``.
    """
    if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"perturb rate must be a probability in [0, 1]; got {rate!r}")
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device)
    return (u < float(rate)).to(device)


def check_strength(strength: object, maximum: int, what: str) -> int:
    """Validate ``perturb``'s ``strength``: an int in ``[1, maximum]``."""
    if isinstance(strength, bool) or not isinstance(strength, int) or not 1 <= strength <= maximum:
        raise ValueError(
            f"perturb strength must be an int in [1, {maximum}] ({what}); got {strength!r}"
        )
    return strength
