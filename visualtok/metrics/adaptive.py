"""Adaptive length for 1D tokenizers: per image, the fewest tokens that meet a target quality.

``encode_adaptive(tokenizer, images, target)`` works with any tokenizer with ``supports_prefix``
(TiTok, FlexTok, ReTok). Quality is PSNR in dB (``metric="psnr"``). Two ways to choose k:

* ``method="search"``: the baseline. Per image, bisection over k in [1, N] assuming quality grows
  with k, with one decode per probe (about log2(N) + 1 decodes per image).
* ``method="predictor"``: one pass, in the spirit of KARL (Duggal et al. 2025): a small
  ``LengthPredictor`` reads the quantized tokens of the full encoding (the encoder's output, no
  decode), optionally with cheap statistics of the input image (``image_statistics``), and
  predicts the image's whole quality curve q(k) on a grid of k (interpolated linearly in log k
  to every integer k, the set the search picks from). Rule "margin": the smallest k with
  ``q(k) - margin(k) >= target``; rule "risk": the k minimising ``k / N + w * P(miss | k)``
  under the predictor's error per length, which spends its misses where meeting is dearest. It
  is trained on the tokenizer's own per-image rate-distortion curves
  (``train/train_length_predictor.py``); the margin or ``w`` is calibrated there on held-out
  photos for a target coverage.

Results are ``AdaptiveCodes``: ``codes [B, N, F]`` with every position ``>= lengths[b]`` set to
``pad_value``, and ``lengths [B]``. Padding and lengths are explicit; ``decode_adaptive`` decodes
each image from exactly its prefix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, NonNegativeFloat, NonNegativeInt, PositiveInt
from ..hub import PretrainedMixin
from ..registry import register_model_class
from .image import psnr

__all__ = [
    "AdaptiveCodes",
    "LengthPredictor",
    "LengthPredictorConfig",
    "encode_adaptive",
    "decode_adaptive",
    "image_statistics",
    "dct_sparsity",
    "curve_at",
    "evaluate_adaptive",
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


_GRIDS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# coefficients kept, as a share of the image's values, for the DCT-sparsity features
_DCT_KEEP = (1 / 4096, 1 / 2048, 1 / 1024, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16)
NUM_IMAGE_STATISTICS = len(_GRIDS) + 2 + len(_DCT_KEEP)


def _dct_basis(n: int, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``[n, n]`` (float64)."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    basis = torch.cos(math.pi * (i[None, :] + 0.5) * i[:, None] / n) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def dct_sparsity(images: torch.Tensor, keep: tuple[float, ...] = _DCT_KEEP) -> torch.Tensor:
    """PSNR of each image rebuilt from only its largest global 2D-DCT coefficients (per channel
    transform, coefficients ranked over all channels), for each share ``keep`` of the values kept:
    ``[B, 3, H, W]`` -> ``[B, len(keep)]``. A transform codec's rate-distortion curve in a few
    numbers; by Parseval the error is the energy of the dropped coefficients (no inverse)."""
    x = images.double()
    h, w = x.shape[-2:]
    coef = _dct_basis(h, x.device) @ x @ _dct_basis(w, x.device).T
    energy = coef.flatten(1).pow(2).sort(dim=1, descending=True).values
    total = x.flatten(1).pow(2).sum(1, keepdim=True)
    kept = energy.cumsum(1)
    n = energy.shape[1]
    idx = torch.tensor([max(1, round(f * n)) - 1 for f in keep], device=x.device)
    mse = ((total - kept[:, idx]) / n).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).float()


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """How hard an image is to compress, ``[B, 3, H, W]`` in [0, 1] -> ``[B, 22]``: the PSNR of
    its block means on 2x2 .. 64x64 grids (bilinear upsampling; grids capped at the image size),
    log10 pixel variance, log10 gradient energy and ``dct_sparsity`` (9 shares of coefficients).
    Cheap (no network), computed in the same pass as the encode."""
    x = images.float()
    feats = []
    for g in _GRIDS:
        g = min(g, x.shape[-2], x.shape[-1])
        coarse = F.interpolate(F.adaptive_avg_pool2d(x, g), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        feats.append(psnr(coarse.clamp(0, 1), x))
    feats.append(torch.log10(x.flatten(1).var(dim=1) + 1e-6))
    grad = (x.diff(dim=-1).pow(2).mean(dim=(1, 2, 3)) + x.diff(dim=-2).pow(2).mean(dim=(1, 2, 3)))
    feats.append(torch.log10(grad + 1e-8))
    return torch.cat([torch.stack(feats, dim=1), dct_sparsity(x)], dim=1)


_INPUTS = ("tokens", "tokens+image")


@dataclass
class LengthPredictorConfig(Config):
    """Constructor arguments of ``LengthPredictor``."""

    num_tokens: PositiveInt = 32  # N of the tokenizer it was trained for
    token_dim: PositiveInt = 6  # D of the tokenizer's quantized values
    lengths: tuple[PositiveInt, ...] = ()  # the prefix lengths it predicts q for (empty: 1..N)
    # 0: a linear map (fitted by ridge regression); > 0: an MLP with this hidden width
    hidden: NonNegativeInt = 256
    # "tokens": pooled quantized tokens (mean, std, mean of the first 4); "tokens+image": those
    # plus ``image_statistics`` of the input
    inputs: Literal["tokens", "tokens+image"] = "tokens"
    tokenizer: str | None = None  # name/path of the tokenizer (informational)
    metric: str = "psnr"
    # dB subtracted from the predicted curve: ``margin`` everywhere plus ``margins[i]`` at
    # ``lengths[i]`` (per-length quantiles of the error, calibrated on training images)
    margin: float = 0.0
    margins: tuple[float, ...] = ()
    # how a curve becomes a choice: "margin", the smallest k whose curve minus the margins meets
    # the target; "risk", per image the k that minimises k / N + risk_weight * P(miss | k), with
    # P(miss | k) = Phi((target - q(k)) / sigma(k)) (sigma: held-out error per length): it spends
    # tokens where they buy the most coverage and takes its misses where meeting is dearest
    rule: Literal["margin", "risk"] = "margin"
    risk_weight: NonNegativeFloat = 0.0
    sigma: tuple[float, ...] = ()
    decode_kwargs: dict[str, Any] = field(default_factory=dict)  # how the curves were decoded


@register_model_class
class LengthPredictor(nn.Module, PretrainedMixin):
    """Quantized tokens ``[B, N, D]`` (and the images, with ``inputs="tokens+image"``) ->
    predicted quality curve ``[B, K]`` at ``lengths``, never decreasing in k.

    The inputs are standardised with the training set's mean and std (buffers), then mapped by a
    linear layer or a small MLP. ``choose`` interpolates the curve (linear in log k) so any k in
    1..N can be picked, not only a grid point.
    """

    config_class = LengthPredictorConfig

    def __init__(self, config: LengthPredictorConfig) -> None:
        super().__init__()
        n, d, h = config.num_tokens, config.token_dim, config.hidden
        lengths = tuple(int(k) for k in config.lengths) or tuple(range(1, n + 1))
        if list(lengths) != sorted(set(lengths)) or lengths[0] < 1 or lengths[-1] != n:
            raise ValueError(f"lengths must increase strictly within [1, {n}] and end at {n}; "
                             f"got {lengths}")
        for name in ("margins", "sigma"):
            if getattr(config, name) and len(getattr(config, name)) != len(lengths):
                raise ValueError(f"{name} must have one value per length ({len(lengths)}); got "
                                 f"{len(getattr(config, name))}")
        if config.rule == "risk" and (len(config.sigma) != len(lengths)
                                      or min(config.sigma) <= 0):
            raise ValueError("rule 'risk' needs sigma: one positive error scale (dB) per length")
        self.config = config
        self.lengths = lengths
        self.num_features = 3 * d + (NUM_IMAGE_STATISTICS if config.inputs == "tokens+image" else 0)
        f, k = self.num_features, len(lengths)
        self.net = (nn.Linear(f, k) if h == 0 else
                    nn.Sequential(nn.Linear(f, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                                  nn.Linear(h, k)))
        self.register_buffer("feature_mean", torch.zeros(f))
        self.register_buffer("feature_std", torch.ones(f))
        self.register_buffer("offset", torch.zeros(k))  # mean training curve

    def features(self, z_q: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Raw (unstandardised) inputs ``[B, F]``."""
        n, d = self.config.num_tokens, self.config.token_dim
        if z_q.ndim != 3 or tuple(z_q.shape[1:]) != (n, d):
            raise ValueError(f"LengthPredictor takes quantized tokens [B, {n}, {d}]; "
                             f"got {tuple(z_q.shape)}")
        z = z_q.float()
        parts = [z.mean(1), z.std(1, correction=0), z[:, :4].mean(1)]
        if self.config.inputs == "tokens+image":
            if images is None or images.ndim != 4 or images.shape[0] != z.shape[0]:
                raise ValueError("this LengthPredictor (inputs='tokens+image') also takes the "
                                 "images [B, 3, H, W] the tokens were encoded from")
            parts.append(image_statistics(images.to(z.device)))
        return torch.cat(parts, dim=1)

    def forward(self, z_q: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        x = (self.features(z_q, images) - self.feature_mean) / self.feature_std
        return (self.net(x) + self.offset).cummax(dim=1).values

    def dense(self, curve: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` on ``lengths`` -> ``[B, N]`` at k = 1..N (see ``curve_at``)."""
        ks = torch.arange(1, self.config.num_tokens + 1, device=curve.device)
        return curve_at(curve, self.lengths, ks)

    def choose(self, curve: torch.Tensor, target: float, margins: bool = True) -> torch.Tensor:
        """k in 1..N per image from a predicted curve (linear in log k between the lengths).

        Rule "margin" (or ``margins=False``: the curve as it is): the smallest k with the curve
        minus the margins ``>= target``. Rule "risk": the k minimising ``k / N + risk_weight *
        P(miss)`` (see ``LengthPredictorConfig``). Either way N when even N is predicted to miss.
        """
        if margins and self.config.rule == "risk":
            return self._choose_risk(curve, target)
        adj = curve
        if margins:
            adj = curve - self.config.margin
            if self.config.margins:
                adj = adj - torch.tensor(self.config.margins, device=curve.device)
        ok = self.dense(adj) >= target
        n = ok.shape[1]
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0].long(),
                                                                            n - 1))
        return first.long() + 1

    def _choose_risk(self, curve: torch.Tensor, target: float) -> torch.Tensor:
        n = self.config.num_tokens
        ks = torch.arange(1, n + 1, device=curve.device)
        q = self.dense(curve - self.config.margin)
        sigma = curve_at(torch.tensor(self.config.sigma, device=curve.device)[None],
                         self.lengths, ks)
        miss = torch.special.ndtr((target - q) / sigma)
        k = (ks / n + self.config.risk_weight * miss).argmin(1) + 1
        return torch.where(q[:, -1] < target, torch.full_like(k, n), k)


def curve_at(curve: torch.Tensor, lengths: tuple[int, ...], ks: torch.Tensor) -> torch.Tensor:
    """Curves ``[B, K]`` given at ``lengths`` -> ``[B, len(ks)]`` at ``ks``, linear in log k
    between lengths (constant beyond them)."""
    grid = torch.tensor(lengths, device=curve.device, dtype=torch.float64)
    k = ks.to(curve.device, torch.float64)
    if len(lengths) == 1:
        return curve[:, :1].expand(-1, k.numel())
    j = torch.searchsorted(grid, k).clamp(1, len(lengths) - 1)
    lo, hi = j - 1, j
    w = ((k.log() - grid[lo].log()) / (grid[hi].log() - grid[lo].log())).clamp(0, 1)
    w = w.to(curve.dtype)
    return curve[:, lo] * (1 - w) + curve[:, hi] * w


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
        curve = predictor(z_q, images if predictor.config.inputs == "tokens+image" else None)
        lengths, decodes = predictor.choose(curve, target).to(codes.device), 0
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


@torch.no_grad()
def evaluate_adaptive(tok: Any, images: torch.Tensor, target: float, method: str,
                      predictor: LengthPredictor | None = None,
                      decode_kwargs: dict | None = None) -> dict[str, Any]:
    """One image at a time (as a user would call it): chosen lengths, the PSNR of each image
    decoded from its prefix, the share meeting ``target``, mean tokens, seconds per image (the
    choice only, not the checking decode)."""
    kw = decode_kwargs or {}
    lengths, quality, seconds = [], [], 0.0
    for i in range(images.shape[0]):
        x = images[i : i + 1]
        t0 = time.perf_counter()
        out = encode_adaptive(tok, x, target, method=method, predictor=predictor,
                              decode_kwargs=kw)
        seconds += time.perf_counter() - t0
        lengths.append(int(out.lengths[0]))
        quality.append(float(psnr(tok.decode(out.prefix(0), **kw), x)[0]))
    q = torch.tensor(quality)
    return {"method": method, "target": float(target), "lengths": lengths, "psnr": quality,
            "met": float((q >= target).float().mean()),
            "mean_tokens": sum(lengths) / len(lengths), "mean_psnr": float(q.mean()),
            "seconds": seconds / images.shape[0]}
