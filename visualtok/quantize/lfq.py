"""Lookup-free / binary quantization (LFQ, MAGVIT-v2, Yu et al. 2023) with a group-wise entropy.

Each channel becomes one bit: ``q = +bit_scale`` where ``z > 0`` else ``-bit_scale``. Bits are
grouped little-endian into factors of ``g = group_size`` bits (bit ``j`` of group ``f`` is channel
``f * g + j`` and has weight ``2**j``), so the layout is ``(2**g,) * (D // g)`` and a 128-bit code
(``D = 128``) is 16 factors of 256: nothing of size ``2**D`` is ever built.

Training losses: commitment ``beta * mse(z, sg(q))`` and the entropy loss
``entropy_weight * (mean per-sample entropy - diversity_gamma * codebook entropy)``. The soft
assignment over the ``2**D`` codes, ``softmax(2 z.c / T)``, factorizes exactly over bit groups, so
the per-sample entropy is the sum of the group entropies; the codebook (batch) entropy is
computed per group over its ``2**g`` sub-codes (the sum bounds the full one from above).
Cost: ``O(N (D/g) 2**g)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_quantizer
from .base import Quantizer
from .bits import BitPacker
from .config import QuantizerConfig
from .layout import CodeLayout
from .search import check_strength, token_mask

__all__ = ["LookupFreeQuantizer", "entropy"]


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of probabilities ``p`` along ``dim``."""
    return -(p * p.clamp(min=1e-12).log()).sum(dim)


@register_quantizer("lfq")
class LookupFreeQuantizer(Quantizer):
    """LFQ / binary quantizer. Codes ``[B, *S, D // g]`` with layout ``(2**g,) * (D // g)``."""

    loss_keys = ("total", "commitment", "entropy")

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        g, d = config.group_size, config.dim
        self.group_size = g
        self.num_groups = d // g
        self.bits = BitPacker((g,) * self.num_groups)
        # the 2**g sub-codes of one group as bits {0, 1}: [2**g, g]
        sub = BitPacker((g,)).unpack(torch.arange(2**g).unsqueeze(1))
        self.register_buffer("_sub_codes", sub.float(), persistent=False)
        self.layout = CodeLayout((2**g,) * self.num_groups, kind="lfq")

    # ------------------------------------------------------------------ bits <-> codes
    def codes_to_bits(self, codes: torch.Tensor) -> torch.Tensor:
        """``[N, D // g]`` codes -> ``[N, D]`` bits in {0, 1} (int64)."""
        return self.bits.unpack(codes)

    def bits_to_codes(self, bits: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` bits in {0, 1} -> ``[N, D // g]`` codes."""
        return self.bits.pack(bits)

    # ------------------------------------------------------------------ protocol
    def _quantize(self, z: torch.Tensor):
        cfg = self.config
        # bits as {0., 1.} floats straight from the comparison (one kernel, no bool tensor), and
        # q = (2 bit - 1) * scale from them: much cheaper than a select on CPU.
        bits = torch.gt(z, 0, out=torch.empty_like(z))
        q = self._bits_to_values(bits)
        codes = self.bits_to_codes(bits)
        if not self.training:
            return q, codes, {}, {}
        commitment = cfg.beta * F.mse_loss(z, q)
        per_sample, codebook = self._entropies(z)
        entropy_loss = cfg.entropy_weight * (per_sample - cfg.diversity_gamma * codebook)
        losses = {"commitment": commitment, "entropy": entropy_loss,
                  "total": commitment + entropy_loss}
        stats = {"per_sample_entropy": per_sample.detach(), "codebook_entropy": codebook.detach()}
        return z + (q - z).detach(), codes, losses, stats

    def _entropies(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group-wise (mean per-sample entropy, codebook entropy), both summed over groups, nats."""
        cfg = self.config
        zg = z.view(-1, self.num_groups, self.group_size)  # [N, G, g]
        candidates = (2 * self._sub_codes - 1) * cfg.bit_scale  # [2**g, g]
        # -|z - c|^2 = 2 z.c + const per row: logits over the 2**g sub-codes of each group.
        logits = (zg @ candidates.t()) * (2.0 / cfg.entropy_temperature)  # [N, G, 2**g]
        p = logits.softmax(-1)
        per_sample = entropy(p).sum(-1).mean()
        codebook = entropy(p.mean(0)).sum()
        return per_sample, codebook

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self._bits_to_values(self.codes_to_bits(codes).float())

    def _bits_to_values(self, bits: torch.Tensor) -> torch.Tensor:
        """Float bits in {0, 1} -> ``(2 bit - 1) * bit_scale``."""
        s = self.config.bit_scale
        return bits.mul(2 * s).sub_(s)

    def features(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, *S, F]`` codes -> ``[B, *S, D]`` bits as +-1 (embedding-free generator input)."""
        codes = self.layout.validate(codes)
        lead = codes.shape[:-1]
        bits = self.codes_to_bits(codes.reshape(-1, self.layout.num_factors))
        return (bits.float() * 2 - 1).reshape(*lead, self.dim)

    @torch.no_grad()
    def perturb(self, codes: torch.Tensor, rate: float, strength: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Each token, with probability ``rate``, has ``strength`` distinct random bits flipped."""
        codes = self.layout.validate(codes)
        check_strength(strength, self.dim, "bits to flip")
        flat = codes.reshape(-1, self.layout.num_factors).clone()
        mask = token_mask((flat.shape[0],), rate, generator, flat.device)
        m = int(mask.sum())
        if m:
            gen_device = generator.device if generator is not None else flat.device
            order = torch.rand(m, self.dim, generator=generator, device=gen_device).argsort(-1)
            flip = torch.zeros(m, self.dim, dtype=torch.long, device=flat.device)
            flip.scatter_(1, order[:, :strength].to(flat.device), 1)
            flat[mask] = self.bits_to_codes(self.codes_to_bits(flat[mask]) ^ flip)
        return flat.view_as(codes)
