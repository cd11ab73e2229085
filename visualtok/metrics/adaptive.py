"""Adaptive length for 1D tokenizers: per image, the fewest tokens that meet a target quality.

``encode_adaptive(tokenizer, images, target)`` works with any tokenizer with ``supports_prefix``
(TiTok, FlexTok, ReTok). Quality is PSNR in dB (``metric="psnr"``). Two ways to choose k:

* ``method="search"``: the baseline. Per image, bisection over k in [1, N] assuming quality grows
  with k, with one decode per probe (about log2(N) + 1 decodes per image).
* ``method="predictor"``: one pass, in the spirit of KARL (Duggal et al. 2025): a small
  ``LengthPredictor`` reads the quantized tokens of the full encoding (the encoder's output, no
  decode) and predicts the image's whole quality curve q(k) for k = 1..N; the chosen k is the
  smallest with ``q(k) - margin >= target``. It is trained on the tokenizer's own per-image
  rate-distortion curves (``train/train_length_predictor.py``); ``margin`` is calibrated there.

Results are ``AdaptiveCodes``: ``codes [B, N, F]`` with every position ``>= lengths[b]`` set to
``pad_value``, and ``lengths [B]``. Padding and lengths are explicit; ``decode_adaptive`` decodes
each image from exactly its prefix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import Config, PositiveInt
from ..hub import PretrainedMixin
from ..registry import register_model_class
from .image import psnr

__all__ = [
    "AdaptiveCodes",
    "LengthPredictor",
    "LengthPredictorConfig",
    "encode_adaptive",
    "decode_adaptive",
    "quality_curves",
    "search_lengths",
]

_METRICS = ("psnr",)


@dataclass
class AdaptiveCodes:
    """Per-image prefixes: ``codes [B, N, F]`` (padded with ``pad_value``), ``lengths [B]``."""

    codes: torch.Tensor
    lengths: torch.Tensor
    pad_value: int = 0
    stats: dict[str, Any] = field(default_factory=dict)  # seconds, decodes, method

    def prefix(self, i: int) -> torch.Tensor:
        """The codes of image ``i``: ``[1, lengths[i], F]``."""
        return self.codes[i : i + 1, : int(self.lengths[i])]


def _check_tokenizer(tok: Any) -> None:
    if not getattr(tok, "supports_prefix", False) or len(getattr(tok, "token_shape", ())) != 1:
        raise ValueError(f"adaptive length needs a 1D tokenizer with supports_prefix; "
                         f"{type(tok).__name__} has none")


def _check_target(target: Any, metric: str) -> float:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}; got {metric!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not (
        0 < float(target) < 200
    ):
        raise ValueError(f"target must be a PSNR in dB (a number in (0, 200)); got {target!r}")
    return float(target)


def _pad(codes: torch.Tensor, lengths: torch.Tensor, pad_value: int) -> torch.Tensor:
    keep = torch.arange(codes.shape[1], device=codes.device)[None, :] < lengths[:, None]
    return torch.where(keep[..., None], codes, torch.full_like(codes, pad_value))


@torch.no_grad()
def _decode_prefix(tok: Any, codes: torch.Tensor, k: int, decode_kwargs: dict) -> torch.Tensor:
    return tok.decode(codes[:, :k], **decode_kwargs)


@torch.no_grad()
def quality_curves(tok: Any, images: torch.Tensor, ks: list[int] | None = None,
                   decode_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR of every image decoded from each prefix length: ``(codes, q [B, len(ks)])``."""
    _check_tokenizer(tok)
    ks = ks or list(range(1, tok.max_tokens + 1))
    codes = tok.encode(images)
    curves = torch.stack([psnr(_decode_prefix(tok, codes, k, decode_kwargs or {}), images)
                          for k in ks], dim=1)
    return codes, curves


@torch.no_grad()
def search_lengths(tok: Any, images: torch.Tensor, target: float, codes: torch.Tensor,
                   decode_kwargs: dict | None = None) -> tuple[torch.Tensor, int]:
    """Bisection per image: smallest k with PSNR >= target (N when even N misses it)."""
    n = tok.max_tokens
    lengths, decodes = [], 0
    for i in range(images.shape[0]):
        img, c = images[i : i + 1], codes[i : i + 1]
        lo, hi = 1, n  # invariant: the answer lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            decodes += 1
            if float(psnr(_decode_prefix(tok, c, mid, decode_kwargs or {}), img)) >= target:
                hi = mid
            else:
                lo = mid + 1
        lengths.append(lo)
    return torch.tensor(lengths, dtype=torch.long, device=codes.device), decodes


@dataclass
class LengthPredictorConfig(Config):
    """Constructor arguments of ``LengthPredictor``."""

    num_tokens: PositiveInt = 32  # N of the tokenizer it was trained for
    token_dim: PositiveInt = 6  # D of the tokenizer's quantized values
    lengths: tuple[PositiveInt, ...] = ()  # the prefix lengths it predicts q for (empty: 1..N)
    hidden: PositiveInt = 256
    tokenizer: str | None = None  # name/path of the tokenizer (informational)
    metric: str = "psnr"
    # dB subtracted from the predicted curve (calibrated on training images)
    margin: float = 0.0
    decode_kwargs: dict[str, Any] = field(default_factory=dict)  # how the curves were decoded


@register_model_class
class LengthPredictor(nn.Module, PretrainedMixin):
    """Quantized tokens ``[B, N, D]`` -> predicted quality curve ``[B, K]`` at ``lengths``.

    The curve is parameterised as q(first length) plus non-negative increments, so it never
    decreases.
    """

    config_class = LengthPredictorConfig

    def __init__(self, config: LengthPredictorConfig) -> None:
        super().__init__()
        n, d, h = config.num_tokens, config.token_dim, config.hidden
        lengths = tuple(int(k) for k in config.lengths) or tuple(range(1, n + 1))
        if list(lengths) != sorted(set(lengths)) or lengths[0] < 1 or lengths[-1] != n:
            raise ValueError(f"lengths must increase strictly within [1, {n}] and end at {n}; "
                             f"got {lengths}")
        self.config = config
        self.lengths = lengths
        self.net = nn.Sequential(nn.LayerNorm(n * d), nn.Linear(n * d, h), nn.SiLU(),
                                 nn.Linear(h, h), nn.SiLU(), nn.Linear(h, len(lengths)))
        self.register_buffer("offset", torch.zeros(()))  # mean q(1) of the training curves

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        n, d = self.config.num_tokens, self.config.token_dim
        if z_q.ndim != 3 or tuple(z_q.shape[1:]) != (n, d):
            raise ValueError(f"LengthPredictor takes quantized tokens [B, {n}, {d}]; "
                             f"got {tuple(z_q.shape)}")
        out = self.net(z_q.flatten(1).float())
        first = out[:, :1] + self.offset
        steps = nn.functional.softplus(out[:, 1:])
        return torch.cat([first, first + steps.cumsum(dim=1)], dim=1)

    def choose(self, curve: torch.Tensor, target: float) -> torch.Tensor:
        """Smallest length with ``curve - margin >= target``; N when none is."""
        ok = (curve - self.config.margin) >= target
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0].long(),
                                                                            ok.shape[1] - 1))
        return torch.tensor(self.lengths, device=curve.device)[first.long()]


@torch.no_grad()
def encode_adaptive(tok: Any, images: torch.Tensor, target: float, metric: str = "psnr",
                    method: str = "search", predictor: LengthPredictor | None = None,
                    decode_kwargs: dict | None = None, pad_value: int = 0) -> AdaptiveCodes:
    """Per image, the fewest tokens whose decode meets ``target`` (see the module docstring)."""
    _check_tokenizer(tok)
    target = _check_target(target, metric)
    t0 = time.perf_counter()
    codes = tok.encode(images)
    if method == "search":
        lengths, decodes = search_lengths(tok, images, target, codes, decode_kwargs)
    elif method == "predictor":
        if predictor is None:
            raise ValueError("method 'predictor' needs a trained LengthPredictor (predictor=)")
        if predictor.config.num_tokens != tok.max_tokens:
            raise ValueError(f"the predictor was trained for {predictor.config.num_tokens} "
                             f"tokens; this tokenizer has {tok.max_tokens}")
        z_q = tok.quantizer.decode(codes)
        lengths, decodes = predictor.choose(predictor(z_q), target).to(codes.device), 0
    else:
        raise ValueError(f"method must be 'search' or 'predictor'; got {method!r}")
    stats = {"method": method, "seconds": time.perf_counter() - t0, "decodes": decodes}
    return AdaptiveCodes(_pad(codes, lengths, pad_value), lengths, pad_value, stats)


@torch.no_grad()
def decode_adaptive(tok: Any, adaptive: AdaptiveCodes, **decode_kwargs: Any) -> torch.Tensor:
    """Images ``[B, 3, H, W]``, each decoded from exactly its own prefix."""
    out = None
    for k in adaptive.lengths.unique().tolist():
        idx = (adaptive.lengths == k).nonzero().squeeze(1)
        part = tok.decode(adaptive.codes[idx, :k], **decode_kwargs)
        if out is None:
            out = part.new_empty((adaptive.codes.shape[0], *part.shape[1:]))
        out[idx] = part
    return out
