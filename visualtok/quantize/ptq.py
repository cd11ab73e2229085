"""Post-training dimension-wise quantization of a frozen continuous latent (TokenBridge, 2025).

Latents are multiplied by ``latent_scale`` (TokenBridge: KL-16 VAE latents x 0.2325). The range
``+-value_range`` is taken as ``+-3 sigma`` of a Gaussian (``sigma = value_range / 3``) and split
into ``B = bins`` equal-probability bins of the normal truncated to that range (edges at Gaussian
quantiles). Each bin is decoded to its truncated-normal mean, and a value is assigned to the nearest
of these centroids (after clamping to the range). Every channel is one digit: layout ``(B,) * C``,
e.g. 16 channels x 64 bins = 2^96 codes. No trainable parameters, no loss.

``per_channel=True`` with ``calibrate(batches)`` fits a centre and sigma per channel instead of the
global range. Outputs are divided by ``latent_scale`` again, so ``z_q`` lives in the input's space.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.special import ndtr, ndtri

from ..registry import register_quantizer
from .base import Quantizer, check_latents
from .config import QuantizerConfig
from .fsq import shift_digits
from .layout import CodeLayout
from .search import check_strength, token_mask

__all__ = ["DimensionwiseQuantizer", "gaussian_bins"]

_SIGMAS = 3.0  # the range spans +-3 sigma


def gaussian_bins(bins: int, sigmas: float = _SIGMAS) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-probability bins of N(0, 1) truncated to ``[-sigmas, sigmas]``, in fp64.

    Returns ``(edges [bins + 1], centroids [bins])``: edges at the Gaussian quantiles, each centroid
    the mean of the normal truncated to its bin, ``(phi(a) - phi(b)) / (Phi(b) - Phi(a))``.
    """
    limit = torch.tensor(sigmas, dtype=torch.float64)
    lo, hi = ndtr(-limit), ndtr(limit)
    p = lo + (hi - lo) * torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    edges = ndtri(p)
    edges[0], edges[-1] = -sigmas, sigmas
    pdf = torch.exp(-0.5 * edges**2) / (2 * torch.pi) ** 0.5
    mass = ndtr(edges[1:]) - ndtr(edges[:-1])
    centroids = (pdf[:-1] - pdf[1:]) / mass
    return edges, centroids


@register_quantizer("ptq")
class DimensionwiseQuantizer(Quantizer):
    """TokenBridge post-training quantizer. Codes ``[B, *S, C]``, layout ``(bins,) * C``."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        edges, centroids = gaussian_bins(config.bins)
        mids = (centroids[1:] + centroids[:-1]) / 2  # nearest-centroid decision boundaries
        self.register_buffer("_std_edges", edges.float(), persistent=False)
        self.register_buffer("_std_centroids", centroids.float(), persistent=False)
        self.register_buffer("_std_mids", mids.float().contiguous(), persistent=False)
        sigma = config.value_range / _SIGMAS
        self.register_buffer("center", torch.zeros(config.dim))
        self.register_buffer("sigma", torch.full((config.dim,), sigma))
        self.layout = CodeLayout((config.bins,) * config.dim, kind="ptq")

    # ------------------------------------------------------------------ bins in latent-scaled units
    def edges(self) -> torch.Tensor:
        """Bin edges per channel ``[C, bins + 1]`` (in ``latent_scale``-multiplied units)."""
        return self.center.unsqueeze(1) + self.sigma.unsqueeze(1) * self._std_edges

    def centroids(self) -> torch.Tensor:
        """Decoded value of each bin per channel ``[C, bins]`` (``latent_scale``-scaled units)."""
        return self.center.unsqueeze(1) + self.sigma.unsqueeze(1) * self._std_centroids

    # ------------------------------------------------------------------ protocol
    def _quantize(self, z: torch.Tensor):
        u = ((z * self.config.latent_scale - self.center) / self.sigma).clamp(-_SIGMAS, _SIGMAS)
        codes = torch.bucketize(u, self._std_mids)  # nearest centroid: centroids are sorted
        z_q = self._dequantize(codes)
        if self.training:
            z_q = z + (z_q - z).detach()  # straight-through, should an encoder be fine-tuned
        return z_q, codes, {}, {}

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        values = self.center + self.sigma * self._std_centroids[codes]
        return values / self.config.latent_scale

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> DimensionwiseQuantizer:
        """Per-channel centre and sigma from latents ``[B, *S, C]`` (only with ``per_channel``)."""
        if not self.config.per_channel:
            return self
        count, total, total_sq = 0, None, None
        for z in batches:
            check_latents(z, self.dim)
            x = z.reshape(-1, self.dim).double() * self.config.latent_scale
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x**2).sum(0) if total_sq is None else total_sq + (x**2).sum(0)
            count += x.shape[0]
        if count < 2:
            raise ValueError("calibrate needs at least two latent vectors [B, *S, C]")
        mean = total / count
        var = (total_sq / count - mean**2).clamp(min=1e-12) * count / (count - 1)
        self.center.copy_(mean.float())
        self.sigma.copy_(var.sqrt().float())
        return self

    @torch.no_grad()
    def perturb(self, codes: torch.Tensor, rate: float, strength: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Each token, with probability ``rate``, has every channel's bin shifted by ``+-strength``
        (random sign per channel), clamped to ``[0, bins)``."""
        codes = self.layout.validate(codes)
        check_strength(strength, self.config.bins - 1, "bins to shift")
        flat = codes.reshape(-1, self.layout.num_factors)
        mask = token_mask((flat.shape[0],), rate, generator, flat.device)
        return shift_digits(flat, self.layout.radices, mask, strength, generator).view_as(codes)
