"""Finite scalar quantization (FSQ, Mentzer et al. 2023), with FlexTok's exact math.

Each of the ``D = len(levels)`` channels is bounded with a shifted ``tanh`` and rounded to one of
``L`` levels (straight-through in training). No codebook, no auxiliary loss. For ``L`` levels:

* ``half_l = (L - 1) (1 + 1e-3) / 2``, ``offset = 0.5`` for even ``L`` else ``0``;
* ``bound(z) = tanh(z + atanh(offset / half_l)) * half_l - offset``;
* ``quant = round(bound(z)) / (L // 2)`` (values in ``[-1, 1]``);
* digit ``= round(bound(z)) + L // 2`` in ``[0, L)``; the flat id (``to_ids``) is little-endian,
  the first channel least significant, as FlexTok's ``basis = cumprod([1, L0, L1, ...])``.

Levels from the paper: 2^10 [8,5,5,5], 2^12 [7,5,5,5,5], 2^14 [8,8,8,6,5], 2^16 [8,8,8,5,5,5]
(FlexTok, 64,000 codes).
"""

from __future__ import annotations

import torch

from ..registry import register_quantizer
from .base import Quantizer
from .config import QuantizerConfig
from .layout import CodeLayout
from .search import check_strength, token_mask

__all__ = ["FiniteScalarQuantizer", "shift_digits"]

_EPS = 1e-3


def shift_digits(codes: torch.Tensor, radices: tuple[int, ...], mask: torch.Tensor, strength: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each digit of the tokens picked by ``mask`` by ``+-strength`` (random sign), clamped.

    codes: ``[N, F]`` int64, mask: ``[N]`` bool -> new ``[N, F]`` codes.
    """
    codes = codes.clone()
    m = int(mask.sum())
    if m == 0:
        return codes
    gen_device = generator.device if generator is not None else codes.device
    sign = torch.randint(2, (m, codes.shape[1]), generator=generator, device=gen_device) * 2 - 1
    radix = torch.tensor(radices, device=codes.device)
    shifted = codes[mask] + sign.to(codes.device) * strength
    codes[mask] = torch.minimum(shifted.clamp(min=0), radix - 1)
    return codes


@register_quantizer("fsq")
class FiniteScalarQuantizer(Quantizer):
    """FSQ. Codes ``[B, *S, D]``, one digit per channel, layout = ``levels``."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        levels = config.levels
        self.levels = levels
        lv = torch.tensor(levels, dtype=torch.float32)
        half_l = (lv - 1) * (1 + _EPS) / 2
        offset = torch.where(lv.long() % 2 == 0, 0.5, 0.0)
        self.register_buffer("_half_l", half_l, persistent=False)
        self.register_buffer("_offset", offset, persistent=False)
        self.register_buffer("_shift", (offset / half_l).atanh(), persistent=False)
        self.register_buffer("_half_width", (lv.long() // 2).float(), persistent=False)
        self.register_buffer("_half_width_long", lv.long() // 2, persistent=False)
        self.layout = CodeLayout(levels, kind="fsq")

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` -> bounded values whose rounding lies in ``[-(L//2), L - 1 - L//2]``."""
        return (z + self._shift).tanh() * self._half_l - self._offset

    def _quantize(self, z: torch.Tensor):
        b = self.bound(z)
        r = b.round()
        codes = r.long() + self._half_width_long
        if self.training:
            z_q = (b + (r - b).detach()) / self._half_width  # straight-through round
        else:
            # == _dequantize(codes): r holds small integers, so codes - L // 2 == r exactly
            z_q = r / self._half_width
        return z_q, codes, {}, {}

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self._half_width_long).float() / self._half_width

    @torch.no_grad()
    def perturb(self, codes: torch.Tensor, rate: float, strength: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Each token, with probability ``rate``, has every digit shifted by ``+-strength``
        levels (random sign per digit), clamped to ``[0, L)``."""
        codes = self.layout.validate(codes)
        check_strength(strength, max(self.levels) - 1, "levels to shift")
        flat = codes.reshape(-1, self.layout.num_factors)
        mask = token_mask((flat.shape[0],), rate, generator, flat.device)
        return shift_digits(flat, self.levels, mask, strength, generator).view_as(codes)
