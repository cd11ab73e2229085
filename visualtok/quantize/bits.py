"""Bit packing between binary codes and their bits: the one helper for LFQ and the generator's
bit head.

A factor of radix ``2**w`` holds ``w`` bits, little-endian (bit ``j`` has weight ``2**j``); the
bits of all factors are concatenated in factor order. With widths ``(w_0, w_1, ...)``::

    bits[..., sum(w_<f) + j] = (codes[..., f] >> j) & 1
    codes[..., f]            = sum_j bits[..., sum(w_<f) + j] * 2**j

When every factor has the same width (LFQ groups), packing is one exact float matmul per group
(at most 16 bits, so every partial sum is an exactly representable integer).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BitPacker"]


class BitPacker(nn.Module):
    """``pack(bits [..., D]) -> codes [..., F]`` and ``unpack(codes) -> bits`` for factor widths
    ``widths`` (bits per factor, each 1..62)."""

    def __init__(self, widths: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or any(not 1 <= w <= 62 for w in widths):
            raise ValueError(f"bit widths must be ints in [1, 62]; got {widths}")
        self.widths = widths
        self.num_bits = sum(widths)
        self.num_factors = len(widths)
        self.uniform = len(set(widths)) == 1 and widths[0] <= 16
        factor_of_bit = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(widths))
        shift = torch.cat([torch.arange(w) for w in widths])
        self.register_buffer("factor_of_bit", factor_of_bit, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("weights", (2 ** torch.arange(widths[0])).float(), persistent=False)

    def unpack(self, codes: torch.Tensor) -> torch.Tensor:
        """int ``[..., F]`` codes -> int64 ``[..., D]`` bits in {0, 1}."""
        return (codes[..., self.factor_of_bit] >> self.shift) & 1

    def pack(self, bits: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` bits (bool or {0, 1}) -> int64 ``[..., F]`` codes."""
        lead = bits.shape[:-1]
        if self.uniform:
            grouped = bits.to(torch.float32).reshape(*lead, self.num_factors, self.widths[0])
            return (grouped @ self.weights).long()
        values = bits.long() << self.shift
        out = torch.zeros(*lead, self.num_factors, dtype=torch.long, device=bits.device)
        return out.index_add_(-1, self.factor_of_bit, values)
