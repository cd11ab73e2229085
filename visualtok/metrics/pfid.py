"""pFID (RobusTok, "Image Tokenizer Needs Post-Training"): FID of images from perturbed codes.

rFID decodes the codes a tokenizer produced; a generator, though, samples codes that are slightly
off. pFID measures how gracefully the decoder handles that: encode -> perturb the codes -> decode ->
FID against the reference statistics. The official evaluation code is unreleased, so visualtok
defines the protocol (eval/README.md) and always reports the setting as ``pFID[α, δ, n]``:

* ``α`` (``rate``): each token is perturbed independently with probability α;
* ``δ`` (``strength``): what "nearby" means for the family, through ``quantizer.perturb``:
  VQ: one of the δ nearest codes (itself included, so a perturbed token stays put w.p. 1/δ);
  RVQ: the same on every fine level; FSQ / post-training: every digit shifted by ±δ levels, clamped;
  LFQ / binary: δ distinct bits flipped;
* ``n``: number of images. The random draw is seeded (``seed``) so runs are repeatable.

Defaults (``DEFAULT_RATE``, ``DEFAULT_STRENGTH``): α = 0.1 with δ = 8 (VQ, RVQ) or δ = 1 (FSQ,
post-training, LFQ). The fraction of tokens whose code actually changed is reported too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.image_io import image_batches
from ..quantize.layout import CodeLayout
from .fid import FeatureExtractor, FeatureStats, extract_features, fid_from_features

__all__ = [
    "DEFAULT_RATE",
    "DEFAULT_STRENGTH",
    "default_strength",
    "pfid_label",
    "perturb_codes",
    "PFIDResult",
    "compute_pfid",
]

DEFAULT_RATE = 0.1
DEFAULT_STRENGTH = {"vq": 8, "rvq": 8, "fsq": 1, "ptq": 1, "lfq": 1}


def default_strength(layout: CodeLayout) -> int:
    """The default δ for a code layout (module docstring), capped at what the layout allows."""
    s = DEFAULT_STRENGTH[layout.kind]
    if layout.kind in ("vq", "rvq"):
        return min(s, layout.radices[0])
    if layout.kind == "lfq":
        return s
    return min(s, layout.max_radix - 1)


def pfid_label(rate: float, strength: int, n: int) -> str:
    """``pFID[α, δ, n]`` as reported next to rFID, e.g. ``pFID[0.1, 8, 50000]``."""
    return f"pFID[{rate:g}, {strength}, {n}]"


@torch.no_grad()
def perturb_codes(
    tokenizer: torch.nn.Module,
    codes: torch.Tensor,
    rate: float,
    strength: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """``tokenizer.quantizer.perturb`` on ``codes [B, *S, F]`` -> (new codes, changed fraction).

    The changed fraction is the share of tokens whose code differs in at least one factor.
    """
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate (α) must be a probability in [0, 1]; got {rate!r}")
    new = tokenizer.quantizer.perturb(codes, rate=float(rate), strength=int(strength),
                                      generator=generator)
    if new.shape != codes.shape:
        raise RuntimeError(f"{type(tokenizer.quantizer).__name__}.perturb changed the code shape "
                           f"{tuple(codes.shape)} -> {tuple(new.shape)}")
    changed = float((new != codes).any(-1).double().mean()) if codes.numel() else 0.0
    return new, changed


@dataclass
class PFIDResult:
    """pFID with its setting; ``changed_fraction`` is the measured share of changed tokens."""

    pfid: float
    rate: float
    strength: int
    num_samples: int
    changed_fraction: float
    feature_name: str

    @property
    def label(self) -> str:
        return pfid_label(self.rate, self.strength, self.num_samples)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "label": self.label}


@torch.no_grad()
def compute_pfid(
    tokenizer: torch.nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    reference: FeatureStats | np.ndarray,
    extractor: FeatureExtractor,
    rate: float = DEFAULT_RATE,
    strength: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PFIDResult:
    """pFID of ``tokenizer`` (an ``ImageTokenizer``) on ``images`` against ``reference``
    statistics or reference features ``[M, D]`` (``fid.fid_from_features``).

    ``images``: float ``[N, 3, H, W]`` in [0, 1] (or uint8), or an iterable of such batches, at the
    tokenizer's input size. ``strength=None`` uses ``default_strength(tokenizer.code_layout)``.
    """
    layout = tokenizer.quantizer.layout
    strength = default_strength(layout) if strength is None else int(strength)
    device = torch.device(device) if device is not None else next(tokenizer.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    feats, changed, n = [], 0.0, 0
    bar = tqdm(desc=f"pFID[{rate:g}, {strength}]", unit="img", disable=not progress)
    for b in image_batches(images, batch_size):
        codes = tokenizer.encode(b.to(device))
        new, frac = perturb_codes(tokenizer, codes, rate, strength, gen)
        decoded = tokenizer.decode(new)
        feats.append(extract_features(decoded, extractor, batch_size=batch_size))
        changed += frac * b.shape[0]
        n += b.shape[0]
        bar.update(b.shape[0])
    bar.close()
    if n < 2:
        raise ValueError(f"pFID needs at least 2 images; got {n}")
    name = getattr(extractor, "name", "")
    return PFIDResult(
        pfid=fid_from_features(np.concatenate(feats), reference),
        rate=float(rate),
        strength=strength,
        num_samples=n,
        changed_fraction=changed / n,
        feature_name=name,
    )
