"""Chunked nearest-neighbour search over a codebook, and the random token mask used by ``perturb``.

The search never materialises the full ``[N, K]`` distance matrix (nor a one-hot): tokens are
processed in row chunks so that one chunk holds at most ``max_elements`` distances. Distances use
the squared-norm form ``|e|^2 - 2 z.e`` (the ``|z|^2`` term is constant per row and dropped)
computed by one ``addmm`` per chunk.
"""

from __future__ import annotations

import torch

__all__ = ["nearest_code", "topk_nearest", "token_mask", "MAX_CHUNK_ELEMENTS"]

MAX_CHUNK_ELEMENTS = 2**23  # distances per chunk: 32 MiB in fp32


def _chunk_rows(num_codes: int, chunk_size: int, max_elements: int) -> int:
    return max(1, min(chunk_size, max_elements // max(num_codes, 1)))


@torch.no_grad()
def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    chunk_size: int = 8192,
    max_elements: int = MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Index of the nearest codebook row (squared l2) for each row of ``x``.

    x: ``[N, d]``, codebook: ``[K, d]`` -> ``[N]`` int64.
    """
    n, k = x.shape[0], codebook.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    e2 = codebook.pow(2).sum(1)
    et = codebook.t()
    rows = _chunk_rows(k, chunk_size, max_elements)
    for s in range(0, n, rows):
        d = torch.addmm(e2, x[s : s + rows], et, beta=1.0, alpha=-2.0)
        out[s : s + rows] = d.argmin(1)
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
    e2 = codebook.pow(2).sum(1)
    et = codebook.t()
    rows = _chunk_rows(num_codes, chunk_size, max_elements)
    for s in range(0, n, rows):
        d = torch.addmm(e2, x[s : s + rows], et, beta=1.0, alpha=-2.0)
        out[s : s + rows] = d.topk(k, dim=1, largest=False).indices
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
