"""Residual vector quantization (SoundStream / EnCodec / DAC) over ``VectorQuantizer`` levels.

Level ``i`` quantizes the residual left by levels ``< i``; the output is the sum of the level
outputs. Codes ``[B, *S, Q]`` with layout ``(K,) * Q`` (kind ``rvq``, residual), coarse to fine, so
``decode(codes, depth=q)`` (or codes holding only the first ``q`` levels) decodes a coarse prefix.

Training: each level adds its commitment / codebook losses (summed over levels); with probability
``quantizer_dropout`` a batch trains on a random prefix of ``1..Q`` levels (the codes of the
remaining levels are still computed, without state updates). Under DDP the prefix length is rank
0's draw, broadcast, so every rank runs the same levels' EMA all-reduces in the same order. The
gradient reaches ``z`` through level 0's straight-through (or rotation-trick) path, every level's
output value being included.

Two options give the official codecs' training math:

* ``all_level_gradients``: every level's output and the residual chain keep their
  straight-through gradients (EnCodec, DAC), so each level's projections are trained by the
  reconstruction too, not only level 0's;
* ``dropout_per_sample``: the prefix is drawn per sample (DAC): the first
  ``floor(B * quantizer_dropout)`` samples of the batch each use a uniform ``1..Q`` levels, the
  others all; every level runs on every token, a sample's dropped levels add nothing to ``z_q``
  and nothing to the losses (masked per token, averaged over all tokens).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..registry import register_quantizer
from .base import Quantizer, check_latents, fp32_no_autocast
from .config import _FAMILY_FIELDS, QuantizerConfig
from .distributed import broadcast_, is_distributed
from .layout import CodeLayout
from .search import check_strength, token_mask
from .vq import VectorQuantizer

__all__ = ["ResidualVectorQuantizer"]


@register_quantizer("rvq")
class ResidualVectorQuantizer(Quantizer):
    """RVQ with ``num_quantizers`` levels of ``VectorQuantizer`` (one codebook each)."""

    loss_keys = ("total", "commitment", "codebook")

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        rvq_only = _FAMILY_FIELDS["rvq"] - _FAMILY_FIELDS["vq"]  # back to defaults for one level
        level_cfg = dataclasses.replace(
            config, type="vq", **{k: getattr(QuantizerConfig, k) for k in rvq_only}
        )
        q = config.num_quantizers
        self.levels = nn.ModuleList(VectorQuantizer(level_cfg) for _ in range(q))
        self.num_quantizers = config.num_quantizers
        self.layout = CodeLayout((config.codebook_size,) * config.num_quantizers, kind="rvq",
                                 residual=True)

    def forward(self, z: torch.Tensor):
        self._batch_size = z.shape[0] if isinstance(z, torch.Tensor) and z.ndim > 0 else 1
        return super().forward(z)

    def _per_sample_levels(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Levels used by each token ``[N]`` under per-sample dropout (see module docstring)."""
        b = max(1, min(getattr(self, "_batch_size", 1), num_tokens))
        q_total = self.num_quantizers
        n = torch.full((b,), q_total, dtype=torch.long)
        n_drop = int(b * self.config.quantizer_dropout)
        n[:n_drop] = torch.randint(1, q_total + 1, (n_drop,))
        return n.to(device).repeat_interleave(num_tokens // b)

    def _quantize(self, z: torch.Tensor):
        cfg = self.config
        q_total = self.num_quantizers
        per_sample = self.training and cfg.dropout_per_sample and cfg.quantizer_dropout > 0
        if per_sample:
            token_levels, active = self._per_sample_levels(z.shape[0], z.device), q_total
        else:
            token_levels = None
            active = self._active_levels(z.device) if self.training else q_total
        residual = z
        z_q = None
        codes, stats = [], {}
        level_losses: dict[str, list[torch.Tensor]] = {}
        for i, level in enumerate(self.levels):
            if i < active:
                weight = (token_levels > i).float() if token_levels is not None else None
                out, c, losses_i, level_stats = level._quantize(residual, token_weight=weight)
                for k, v in losses_i.items():
                    level_losses.setdefault(k, []).append(v)
                stats.update({f"{k}_{i}": v for k, v in level_stats.items()})
                if i > 0 and not cfg.all_level_gradients:  # see the module docstring
                    out = out.detach()
                if i + 1 < q_total:
                    residual = residual - (out if cfg.all_level_gradients else out.detach())
                if weight is not None:
                    out = out * weight.unsqueeze(-1)
                z_q = out if z_q is None else z_q + out
            else:  # dropped level: codes only, no state update, no loss
                with torch.no_grad():
                    c = level.nearest(residual).unsqueeze(-1)
                    if i + 1 < q_total:
                        residual = residual - level._dequantize(c)
            codes.append(c)
        # summed over levels: one stack + sum per loss instead of a chain of adds
        losses = {k: v[0] if len(v) == 1 else torch.stack(v).sum() for k, v in level_losses.items()}
        if self.training:
            stats["active_levels"] = (token_levels.float().mean() if token_levels is not None
                                      else torch.tensor(float(active)))
        return z_q, torch.cat(codes, dim=-1), losses, stats

    def _active_levels(self, device: torch.device) -> int:
        """How many levels this training batch uses: ``Q``, or with probability
        ``quantizer_dropout`` a uniform draw from ``1..Q``; one draw shared by all ranks."""
        q_total, p = self.num_quantizers, self.config.quantizer_dropout
        if p <= 0:
            return q_total
        active = q_total
        if float(torch.rand(())) < p:
            active = int(torch.randint(1, q_total + 1, ()))
        if is_distributed():  # the collective needs a tensor on the process group's device
            shared = torch.tensor([active], device=device)
            active = int(broadcast_(shared)[0])
        return active

    @torch.no_grad()
    def encode(self, z: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """``[B, *S, D]`` -> codes ``[B, *S, depth]`` of the first ``depth`` levels (all when
        None); the levels past ``depth`` are not computed (the codes are a prefix of the full
        ones: each level sees only the residual of the levels before it)."""
        if depth is None:
            return super().encode(z)
        if isinstance(depth, bool) or not isinstance(depth, int) or not (
                1 <= depth <= self.num_quantizers):
            raise ValueError(f"depth must be an int in [1, {self.num_quantizers}]; got {depth!r}")
        check_latents(z, self.dim)
        lead = z.shape[:-1]
        with fp32_no_autocast(z.device.type):
            residual, codes = z.reshape(-1, self.dim).float(), []
            for i, level in enumerate(self.levels[:depth]):
                c = level.nearest(residual).unsqueeze(-1)
                codes.append(c)
                if i + 1 < depth:
                    residual = residual - level._dequantize(c)
        return torch.cat(codes, dim=-1).reshape(*lead, depth)

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        out = self.levels[0]._dequantize(codes[:, 0:1])
        for i in range(1, codes.shape[1]):
            out = out + self.levels[i]._dequantize(codes[:, i : i + 1])
        return out

    def decode(self, codes: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """``[B, *S, q]`` codes of the first ``q <= Q`` levels -> ``[B, *S, D]``; ``depth`` keeps
        only the first ``depth`` levels (coarse-to-fine prefix decode)."""
        if not isinstance(codes, torch.Tensor) or codes.ndim < 2:
            raise ValueError(f"codes must be a tensor [B, *S, F] with F <= {self.num_quantizers} "
                             f"levels; got {getattr(codes, 'shape', type(codes).__name__)}")
        given = codes.shape[-1]
        if not 1 <= given <= self.num_quantizers:
            raise ValueError(f"codes must have 1..{self.num_quantizers} levels in the last dim; "
                             f"got shape {tuple(codes.shape)}")
        depth = given if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= given:
            raise ValueError(f"depth must be an int in [1, {given}]; got {depth!r}")
        prefix = CodeLayout(self.layout.radices[:given], kind="rvq", residual=True)
        codes = prefix.validate(codes)[..., :depth]
        lead = codes.shape[:-1]
        with fp32_no_autocast(codes.device.type):
            z_q = self._dequantize(codes.reshape(-1, depth))
        return z_q.reshape(*lead, self.dim)

    @torch.no_grad()
    def calibrate(self, batches) -> ResidualVectorQuantizer:
        """k-means initialise level by level on the residuals of ``batches`` ``[B, *S, D]``."""
        residuals = [z.reshape(-1, self.dim).float() for z in batches]
        if not residuals:
            raise ValueError("calibrate needs at least one batch of latents [B, *S, D]")
        for level in self.levels:
            level.calibrate(residuals)
            residuals = [r - level._dequantize(level.nearest(r).unsqueeze(-1)) for r in residuals]
        return self

    @torch.no_grad()
    def perturb(self, codes: torch.Tensor, rate: float, strength: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Each token, with probability ``rate``, has its fine levels ``1..Q-1`` (level 0 when
        ``Q == 1``) each replaced by one of that code's ``strength`` nearest codes."""
        codes = self.layout.validate(codes)
        check_strength(strength, self.config.codebook_size, "nearest codes to choose from")
        flat = codes.reshape(-1, self.num_quantizers).clone()
        mask = token_mask((flat.shape[0],), rate, generator, flat.device)
        first = 1 if self.num_quantizers > 1 else 0
        for i in range(first, self.num_quantizers):
            flat[mask, i] = self.levels[i].nearby_codes(flat[mask, i], strength, generator)
        return flat.view_as(codes)
