"""The quantizer protocol shared by every family (VQ, LFQ/binary, FSQ, RVQ, post-training).

Contract (DESIGN.md §3-4):

* input latents are **channels-last** ``z: [B, *S, D]`` (S = token layout, D = ``quantizer.dim``);
* ``forward(z) -> QuantOutput(z_q, codes, losses, stats)`` with integer ``codes: [B, *S, F]``;
* ``encode(z) -> codes`` and ``decode(codes) -> z_q``; in eval
  ``decode(encode(z)) == forward(z).z_q`` exactly;
* ``losses`` always has the same keys for a given config (zeros in eval) and a ``total`` that the
  trainer adds to its loss;
* ``stats`` are detached training-batch diagnostics (tensors; empty in eval, where ``usage(codes)``
  is the tool);
* quantization math runs in fp32 with autocast disabled for the input's device type, then casts
  back.

Subclasses call ``super().__init__(config)`` (which validates the config once and sets
``config`` and ``dim``), implement ``_quantize(z32) -> (z_q32, codes, losses, stats)`` and
``_dequantize(codes)``, both on fp32 tensors of shape ``[N, D]`` / ``[N, F]`` (tokens flattened),
and set ``self.layout``.

Inputs are validated here, once, eagerly: wrong type, rank or channel count and NaN/inf raise a
``ValueError``/``TypeError`` naming the problem. The NaN/inf check reads one value back to the
host; a hot loop whose latents come from a model (the trainer) turns it off with
``input_checks(model, False)``. Codes given to ``decode`` are always checked.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import QuantizerConfig
from .layout import CodeLayout

__all__ = ["QuantOutput", "Quantizer", "fp32_no_autocast", "check_latents", "input_checks"]


@dataclass
class QuantOutput:
    """Result of ``Quantizer.forward``."""

    z_q: torch.Tensor  # [B, *S, D] quantized latents, input dtype, straight-through gradients
    codes: torch.Tensor  # [B, *S, F] int64 factor codes
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # always has "total"
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, training only


class fp32_no_autocast:
    """Context manager: disable autocast for ``device_type`` so quantizer math stays in fp32.

    A no-op (no autocast state change) when autocast is not enabled for that device type.
    """

    def __init__(self, device_type: str) -> None:
        try:
            enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError:  # a device type autocast does not know: let autocast decide
            enabled = True
        self._ctx = torch.autocast(device_type=device_type, enabled=False) if enabled else None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def check_latents(z: object, dim: int, name: str = "z", *, finite: bool = True) -> None:
    """Validate latents ``[B, *S, D]``: a floating tensor with ``D == dim``, finite if ``finite``.

    The finiteness check is one reduction (NaN/inf propagate through a sum) and one host read; the
    elementwise test runs only when the sum is not finite (finite values can overflow a sum).
    """
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, *S, {dim}]; got {type(z).__name__}")
    if not z.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating-point tensor [B, *S, {dim}]; got dtype {z.dtype}"
        )
    if z.ndim < 2:
        raise ValueError(
            f"{name} must be [B, *S, {dim}] (channels last, rank >= 2); got shape {tuple(z.shape)}"
        )
    if z.shape[-1] != dim:
        raise ValueError(
            f"{name} must have {dim} channels in its last dim ([B, *S, {dim}], channels last); "
            f"got shape {tuple(z.shape)}"
        )
    if finite and z.numel():
        total = float(z.detach().sum(dtype=torch.float32))
        if not math.isfinite(total) and not bool(torch.isfinite(z).all()):
            raise ValueError(f"{name} contains NaN or inf values")


@contextlib.contextmanager
def input_checks(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Turn the NaN/inf input check of every quantizer inside ``module`` on or off, then restore.

    The trainer runs its steps with the checks off (latents come from the model, and a diverging
    run is caught by its own non-finite-loss check), so a CUDA step does not wait on the host.
    """
    quantizers = [m for m in module.modules() if isinstance(m, Quantizer)]
    previous = [q.check_inputs for q in quantizers]
    for q in quantizers:
        q.check_inputs = enabled
    try:
        yield
    finally:
        for q, p in zip(quantizers, previous):
            q.check_inputs = p


class Quantizer(nn.Module):
    """Base class of every quantizer family. See the module docstring for the contract."""

    layout: CodeLayout
    dim: int
    loss_keys: tuple[str, ...] = ("total",)
    check_inputs: bool = True  # NaN/inf check of forward's latents (see ``input_checks``)

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config.validate()  # every field is checked there, once
        self.dim = config.dim

    # ------------------------------------------------------------------ to implement
    def _quantize(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """fp32 ``[N, D]`` -> (z_q, codes, losses, stats).

        ``z_q: [N, D]`` carries straight-through gradients; ``codes: [N, F]``.
        """
        raise NotImplementedError

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 ``[N, F]`` -> fp32 ``[N, D]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol
    def forward(self, z: torch.Tensor) -> QuantOutput:
        check_latents(z, self.dim, finite=self.check_inputs)
        lead = z.shape[:-1]
        with fp32_no_autocast(z.device.type):
            z_q, codes, losses, stats = self._quantize(z.reshape(-1, self.dim).float())
        return QuantOutput(
            z_q=z_q.reshape(*lead, self.dim).to(z.dtype),
            codes=codes.reshape(*lead, self.layout.num_factors),
            losses=self._complete_losses(losses, z),
            stats=stats,
        )

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, *S, D]`` latents -> ``[B, *S, F]`` int64 codes (no state update)."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z).codes
        finally:
            self.train(was_training)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[B, *S, F]`` codes -> ``[B, *S, D]`` fp32 quantized latents."""
        codes = self.layout.validate(codes)
        lead = codes.shape[:-1]
        with fp32_no_autocast(codes.device.type):
            z_q = self._dequantize(codes.reshape(-1, self.layout.num_factors))
        return z_q.reshape(*lead, z_q.shape[-1])  # explicit width: an empty batch stays [0, *S, D]

    def to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        return self.layout.to_ids(codes)

    def from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.layout.from_ids(ids)

    def features(self, codes: torch.Tensor) -> torch.Tensor:
        """Embedding-free generator input for ``codes``: dequantized values by default."""
        return self.decode(codes)

    def perturb(
        self,
        codes: torch.Tensor,
        rate: float,
        strength: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Replace each token's code with a nearby one with probability ``rate``.

        Used by pFID and RobusTok-style training.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement perturb")

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> Quantizer:
        """Fit data-dependent state (k-means init, post-training ranges).

        Default: nothing to fit.
        """
        return self

    @torch.no_grad()
    def usage(self, codes: torch.Tensor) -> dict[str, object]:
        """Codebook usage of ``codes`` per factor.

        Per factor: histogram, used fraction, perplexity and entropy (bits).
        """
        codes = self.layout.validate(codes).reshape(-1, self.layout.num_factors)
        per_factor = []
        for f, radix in enumerate(self.layout.radices):
            hist = torch.bincount(codes[:, f], minlength=radix) if radix <= 2**24 else None
            if hist is None:  # huge radix: count only the values that occur
                _, counts = torch.unique(codes[:, f], return_counts=True)
                used = int(counts.numel())
            else:
                counts = hist[hist > 0]
                used = int(counts.numel())
            p = counts.double() / max(int(counts.sum()), 1)
            entropy = float(-(p * p.log2()).sum()) if p.numel() else 0.0
            per_factor.append(
                {
                    "radix": radix,
                    "histogram": hist,
                    "used": used,
                    "usage": used / radix,
                    "entropy_bits": entropy,
                    "perplexity": 2.0**entropy,
                }
            )
        return {
            "num_tokens": int(codes.shape[0]),
            "factors": per_factor,
            "usage": sum(f["usage"] for f in per_factor) / len(per_factor),
            "entropy_bits": sum(f["entropy_bits"] for f in per_factor),
            "perplexity": float(
                torch.tensor([f["perplexity"] for f in per_factor]).double().prod()
            ),
            "bits_per_token": self.layout.bits_per_token,
        }

    # ------------------------------------------------------------------ helpers
    def _complete_losses(
        self, losses: dict[str, torch.Tensor], z: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Ensure every key of ``loss_keys`` is present and ``total`` sums them.

        Absent keys are filled with zeros.
        """
        keys = [k for k in self.loss_keys if k != "total"]
        if "total" in losses and all(k in losses for k in keys):
            return {**{k: losses[k] for k in keys}, "total": losses["total"]}
        zero = z.new_zeros((), dtype=torch.float32)
        out = {k: losses.get(k, zero) for k in keys}
        if "total" in losses:
            out["total"] = losses["total"]
        else:  # sum of the given parts only (absent ones are zero): eval costs one zero tensor
            given = [losses[k] for k in keys if k in losses]
            out["total"] = sum(given[1:], given[0]) if given else zero
        return out
