"""The quantizer protocol shared by every family (VQ, LFQ/binary, FSQ, RVQ, post-training).

Contract (DESIGN.md §3-4):

* input latents are **channels-last** ``z: [B, *S, D]`` (S = token layout, D = ``quantizer.dim``);
* ``forward(z) -> QuantOutput(z_q, codes, losses, stats)`` with integer ``codes: [B, *S, F]``;
* ``encode(z) -> codes`` and ``decode(codes) -> z_q``; in eval
  ``decode(encode(z)) == forward(z).z_q`` exactly;
* ``losses`` always has the same keys for a given config (zeros in eval) and a ``total`` that the
  trainer adds to its loss;
* quantization math runs in fp32 with autocast disabled for the input's device type, then casts
  back.

Subclasses implement ``_quantize(z32) -> (z_q32, codes, losses, stats)`` (statistics computed
lazily, ``LazyStats``) and
``_dequantize(codes)``, both on fp32 tensors of shape ``[N, D]`` / ``[N, F]`` (tokens flattened),
and set ``self.layout``.
Public entry points validate inputs here, once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .codepaths import DeferredCheck, check_mode
from .layout import CodeLayout

__all__ = ["QuantOutput", "Quantizer", "LazyStats", "fp32_no_autocast", "check_latents"]


class LazyStats(Mapping[str, torch.Tensor]):
    """Batch statistics, each computed on first access and kept.

    ``_quantize`` returns its statistics as a dict of tensors or zero-argument callables that
    compute one from values captured during the call (code counts, not live buffers): a training
    step that does not log them, or an inference call, launches none of their kernels. Keys are
    known without computing anything.
    """

    def __init__(self, entries: Mapping[str, torch.Tensor | Callable[[], torch.Tensor]]) -> None:
        self._entries = dict(entries)

    def __getitem__(self, key: str) -> torch.Tensor:
        value = self._entries[key]
        if callable(value):
            value = self._entries[key] = value()
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"LazyStats({sorted(self._entries)})"


@dataclass
class QuantOutput:
    """Result of ``Quantizer.forward``."""

    z_q: torch.Tensor  # [B, *S, D] quantized latents, input dtype, straight-through gradients
    codes: torch.Tensor  # [B, *S, F] int64 factor codes
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # always has "total"
    # detached diagnostics (a LazyStats from forward: computed when read)
    stats: Mapping[str, torch.Tensor] = field(default_factory=dict)


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


def _no_pending_check() -> None:
    return None


def check_latents(
    z: object, dim: int, name: str = "z", *, stateless: bool = False
) -> Callable[[], None]:
    """Validate latents ``[B, *S, D]``: a finite floating tensor with ``D == dim``.

    Type, rank and channel errors are raised at once. The NaN/inf check follows
    ``codepaths.check_mode``: eager on CPU; on CUDA queued with ``torch._assert_async`` in a
    training step, or, for a ``stateless`` call (eval mode), deferred: the returned ``finish()``
    reads the queued result and raises the ``ValueError``. Call ``finish()`` before handing results
    back; it is a no-op when the check already ran.
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
    if not z.numel():
        return _no_pending_check
    mode = check_mode(z, stateless)
    if mode == "async":
        # No host sync: max |z| (one reduction, no overflow, NaN propagates) is < inf exactly
        # when every value is finite.
        torch._assert_async(torch.linalg.vector_norm(z, math.inf) < math.inf,
                            f"{name} contains NaN or inf values")
        return _no_pending_check
    # One reduction (NaN/inf propagate through a sum), read now or at the end of the call.
    total = z.sum(dtype=torch.float32)
    if mode == "eager":
        _raise_if_not_finite(total.item(), z, name)
        return _no_pending_check
    pending = DeferredCheck(total)
    return lambda: _raise_if_not_finite(pending.read(), z, name)


def _raise_if_not_finite(total: float, z: torch.Tensor, name: str) -> None:
    """``ValueError`` unless ``z`` is finite, given its sum ``total``: the elementwise check runs
    only when the sum is not finite (which also covers finite values whose sum overflows)."""
    if not math.isfinite(total) and not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} contains NaN or inf values")


class Quantizer(nn.Module):
    """Base class of every quantizer family. See the module docstring for the contract."""

    layout: CodeLayout
    dim: int
    loss_keys: tuple[str, ...] = ("total",)

    # ------------------------------------------------------------------ to implement
    def _quantize(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], dict[str, object]]:
        """fp32 ``[N, D]`` -> (z_q, codes, losses, stats).

        ``z_q: [N, D]`` carries straight-through gradients; ``codes: [N, F]``. ``stats`` values
        are tensors or zero-argument callables that compute one (see ``LazyStats``).
        """
        raise NotImplementedError

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 ``[N, F]`` -> fp32 ``[N, D]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ protocol
    def forward(self, z: torch.Tensor) -> QuantOutput:
        finish_check = check_latents(z, self.dim, stateless=not self.training)
        lead = z.shape[:-1]
        with fp32_no_autocast(z.device.type):
            z_q, codes, losses, stats = self._quantize(z.reshape(-1, self.dim).float())
        losses = self._complete_losses(losses, z)
        out = QuantOutput(
            z_q=z_q.reshape(*lead, self.dim).to(z.dtype),
            codes=codes.reshape(*lead, self.layout.num_factors),
            losses=losses,
            stats=LazyStats(stats),
        )
        finish_check()  # a deferred check (eval on CUDA) raises here, before results leave
        return out

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
        return z_q.reshape(*lead, -1)

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
