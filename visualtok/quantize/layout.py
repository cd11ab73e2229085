"""``CodeLayout``: what the integer codes of a quantizer mean.

Every quantizer returns integer codes shaped ``[B, *S, F]``: ``S`` is the token layout (1D ``[N]``,
2D ``[H, W]``, 3D ``[T, H, W]``, audio frames ``[T]``) and ``F`` the number of factors (digits) per
token. ``CodeLayout`` records the radix of each factor:

==========================  =======================
family                      radices
==========================  =======================
VQ                          ``(K,)``
RVQ (Q levels)              ``(K,) * Q``
FSQ                         the levels, e.g. ``(8, 8, 8, 5, 5, 5)``
LFQ / binary, group ``g``   ``(2**g,) * (d // g)``
post-training, ``C`` ch.    ``(B,) * C``
==========================  =======================

Flat ids are a derived view, little-endian: factor 0 is the least significant digit,
``id = sum_f code_f * prod_{j<f} radix_j``. They exist only while the product of radices fits in
``2**62`` (``flat_vocab`` is ``None`` otherwise); a 2**128 binary codebook works on factor codes
alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CodeLayout", "FLAT_VOCAB_LIMIT"]

FLAT_VOCAB_LIMIT = 2**62

KINDS = ("vq", "rvq", "fsq", "lfq", "ptq")


@dataclass(frozen=True)
class CodeLayout:
    """Radices of the factors of one token's code, and derived quantities."""

    radices: tuple[int, ...]
    kind: str = "vq"  # one of KINDS; tells generator heads what the factors mean
    residual: bool = False  # True when factors are coarse-to-fine residual levels (RVQ)
    _strides: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _cache: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        radices = tuple(int(r) for r in self.radices)
        if not radices or any(r < 2 for r in radices):
            raise ValueError(
                f"CodeLayout radices must be a non-empty tuple of ints >= 2; got {self.radices}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"CodeLayout kind must be one of {KINDS}; got {self.kind!r}")
        object.__setattr__(self, "radices", radices)
        strides, acc = [], 1
        for r in radices:
            strides.append(acc)
            acc *= r
        object.__setattr__(self, "_strides", tuple(strides))

    # ----------------------------------------------------------------- derived quantities
    @property
    def num_factors(self) -> int:
        return len(self.radices)

    @property
    def bits_per_token(self) -> float:
        return float(sum(math.log2(r) for r in self.radices))

    @property
    def flat_vocab(self) -> int | None:
        """Number of distinct tokens, or ``None`` when it exceeds ``2**62``."""
        total = math.prod(self.radices)
        return total if total <= FLAT_VOCAB_LIMIT else None

    @property
    def max_radix(self) -> int:
        return max(self.radices)

    def radix_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.radices, dtype=torch.long, device=device)

    def _device_radices(self, device: torch.device) -> torch.Tensor:
        """``radix_tensor(device)``, made once per device (no host-to-device copy per call)."""
        t = self._cache.get(device)
        if t is None:
            t = self._cache[device] = self.radix_tensor(device)
        return t

    # ----------------------------------------------------------------- validation
    def validate(self, codes: Any, name: str = "codes") -> torch.Tensor:
        """Check ``codes`` is an integer tensor ``[..., F]`` with every digit in range."""
        if not isinstance(codes, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of integer codes [B, *S, {self.num_factors}]; "
                f"got {type(codes).__name__}"
            )
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"{name} must have an integer dtype; got {codes.dtype}")
        if codes.ndim < 2 or codes.shape[-1] != self.num_factors:
            raise ValueError(
                f"{name} must be [B, *S, F] with F={self.num_factors} factors "
                f"(radices {self.radices}); "
                f"got shape {tuple(codes.shape)}"
            )
        if codes.numel():
            uniform = len(set(self.radices)) == 1  # a Python scalar radix: no tensor at all
            radix = self.radices[0] if uniform else self._device_radices(codes.device)
            # codes come from users (decode, from_ids, a generator's inputs): always the exact
            # check, one host read
            bad = (codes < 0) | (codes >= radix)
            if bool(bad.any()):
                f = int(bad.reshape(-1, self.num_factors).any(0).nonzero()[0])
                vals = codes[..., f]
                raise ValueError(
                    f"{name} out of range: factor {f} must be in [0, {self.radices[f]}); "
                    f"got values in [{int(vals.min())}, {int(vals.max())}]"
                )
        return codes.long()

    # ----------------------------------------------------------------- flat ids
    def to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` factor codes -> ``[...]`` flat int64 ids (little-endian)."""
        if self.flat_vocab is None:
            raise ValueError(
                f"this code layout has {self.bits_per_token:.0f} bits per token: "
                "flat ids do not fit in "
                f"int64 (limit 2**62); use the factor codes [..., {self.num_factors}] directly"
            )
        codes = self.validate(codes)
        strides = torch.tensor(self._strides, dtype=torch.long, device=codes.device)
        return (codes * strides).sum(-1)

    def from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``[...]`` flat ids -> ``[..., F]`` factor codes (inverse of ``to_ids``)."""
        vocab = self.flat_vocab
        if vocab is None:
            raise ValueError(
                f"this code layout has {self.bits_per_token:.0f} bits per token: it has no flat ids"
            )
        if (
            not isinstance(ids, torch.Tensor)
            or ids.dtype.is_floating_point
            or ids.dtype == torch.bool
        ):
            raise TypeError("ids must be an integer torch.Tensor")
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(
                f"ids out of range: expected [0, {vocab}); got [{int(ids.min())}, {int(ids.max())}]"
            )
        strides = torch.tensor(self._strides, dtype=torch.long, device=ids.device)
        radix = self.radix_tensor(ids.device)
        return (ids.unsqueeze(-1) // strides) % radix

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "radices": list(self.radices),
            "kind": self.kind,
            "residual": self.residual,
            "bits_per_token": self.bits_per_token,
            "flat_vocab": self.flat_vocab,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodeLayout:
        return cls(
            radices=tuple(d["radices"]), kind=d.get("kind", "vq"), residual=d.get("residual", False)
        )
