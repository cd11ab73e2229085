"""Nearest-neighbour search over a codebook, and the random token mask used by ``perturb``.

The nearest row of ``e`` minimises ``|e|^2 - 2 z.e`` (``|z|^2`` is constant per token), i.e.
maximises the score ``z.e - |e|^2 / 2``: one linear layer ``z @ e^T + b`` with the bias
``b = -|e|^2 / 2`` and the codebook itself as the (contiguous ``[K, d]``) weight, through
``visualtok.nn.linear.linear`` (oneDNN for CPU fp32, ``F.linear`` elsewhere). No one-hot is built.

* CPU: scores in cache-sized tiles (``rows x cols``) with a running max
  over codebook tiles, which keeps small-``d`` codebooks (TiTok 4096 x 12) compute- rather than
  memory-bound; a single call when ``K <= 1024`` and the tokens fit in one row tile.
* Accelerators (a step there is bound by kernel launches): one ``linear`` + ``argmax``, no Python
  loop, when the ``N x K`` scores fit in ``max_elements`` (``2**26``: 256 MiB of fp32, e.g. 16,384
  tokens x 4,096 codes); otherwise row chunks of ``min(chunk_size, max_elements // K)`` rows, each
  chunk's argmax written in place.
"""

from __future__ import annotations

import torch

from ..nn.linear import linear

__all__ = [
    "nearest_code", "topk_nearest", "l2_normalize", "score_weight_and_bias", "token_mask",
    "check_strength", "MAX_CHUNK_ELEMENTS",
]

MAX_CHUNK_ELEMENTS = 2**26  # scores per pass on accelerators (256 MiB fp32)
TOPK_MAX_ELEMENTS = 2**24  # scores per chunk of the top-k search (perturb)
CPU_TILE_ROWS, CPU_TILE_COLS = 256, 1024  # 1 MiB of fp32 scores per tile: stays in L2


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` scaled to unit l2 norm: the values of ``F.normalize(x, dim=-1, eps=eps)``,
    without its Python wrappers (cosine lookups normalise twice per call)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def score_weight_and_bias(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The codebook as a contiguous ``[K, d]`` weight and its score bias ``-|e|^2 / 2`` ``[K]``."""
    e = codebook.contiguous()
    return e, e.square().sum(1).mul_(-0.5)


def _argmax_in_row_chunks(
    x: torch.Tensor, e: torch.Tensor, b: torch.Tensor, rows: int
) -> torch.Tensor:
    """``argmax(linear(x, e, b), 1)`` computed ``rows`` tokens at a time (one call if they fit)."""
    n = x.shape[0]
    if n <= rows:
        return linear(x, e, b).argmax(1)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    for s in range(0, n, rows):
        torch.argmax(linear(x[s : s + rows], e, b), 1, out=out[s : s + rows])
    return out


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
    e, b = score_weight_and_bias(codebook)
    if x.device.type != "cpu":  # one pass when the scores fit, else row chunks
        rows = n if n * k <= max_elements else max(1, min(chunk_size, max_elements // k))
        return _argmax_in_row_chunks(x, e, b, rows)
    if k <= CPU_TILE_COLS:
        rows = max(1, min(chunk_size, max_elements // k, max(CPU_TILE_ROWS,
                                                             CPU_TILE_ROWS * CPU_TILE_COLS // k)))
        return _argmax_in_row_chunks(x, e, b, rows)
    out = torch.empty(n, dtype=torch.long, device=x.device)
    tiles = [(c, e[c : c + CPU_TILE_COLS], b[c : c + CPU_TILE_COLS])
             for c in range(0, k, CPU_TILE_COLS)]
    rows = min(chunk_size, CPU_TILE_ROWS)
    for s in range(0, n, rows):
        xs = x[s : s + rows]
        best, idx = linear(xs, tiles[0][1], tiles[0][2]).max(1)
        for c, et, bt in tiles[1:]:
            val, i = linear(xs, et, bt).max(1)
            better = val > best  # strict: the earlier tile keeps exact ties
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
    max_elements: int = TOPK_MAX_ELEMENTS,
) -> torch.Tensor:
    """Indices of the ``k`` nearest codebook rows, nearest first: ``[N, d]`` -> ``[N, k]`` int64."""
    n, num_codes = x.shape[0], codebook.shape[0]
    e, b = score_weight_and_bias(codebook)
    rows = max(1, min(chunk_size, max_elements // max(num_codes, 1)))
    if n <= rows:
        return linear(x, e, b).topk(k, dim=1).indices
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    for s in range(0, n, rows):
        out[s : s + rows] = linear(x[s : s + rows], e, b).topk(k, dim=1).indices
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
