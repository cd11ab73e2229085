"""Per-image quality metrics (PSNR, SSIM, LPIPS-when-weights-exist) and code statistics.

* ``psnr``/``ssim`` take float RGB ``[B, 3, H, W]`` in [0, 1] (or uint8) and return ``[B]``.
  SSIM follows Wang et al. 2004: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1,
  computed per channel on the valid region (no padding) and averaged over channels and pixels. This
  equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=0)``, which the tests check.
* LPIPS needs pretrained VGG/AlexNet plus linear-calibration weights that are not shipped here.
  ``lpips`` computes it only with a weights file; without one it raises ``MetricUnavailable``.
  Nothing else is ever substituted for it.
* ``code_statistics`` reports codebook usage, perplexity and bits per token / image from a
  quantizer's ``CodeLayout`` and ``Quantizer.usage``, with the number of tokens they were measured
  on and both normalised by the most codes that many tokens can show.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_io import to_float, validate_images
from ..quantize.base import Quantizer

__all__ = ["psnr", "ssim", "lpips", "LPIPS", "MetricUnavailable", "code_statistics"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed in this environment (e.g. missing pretrained weights)."""


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two validated image batches as float32 in [0, 1], of the same shape."""
    a32, b32 = (to_float(validate_images(t, name)).float() for name, t in (("a", a), ("b", b)))
    if a32.shape != b32.shape:
        raise ValueError(
            f"a and b must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a32, b32


@torch.no_grad()
def psnr(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1: ``[B, 3, H, W]`` x2 -> ``[B]``."""
    a, b = _pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(eps))).float()


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


@torch.no_grad()
def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (mean over channels and valid pixels): ``[B]``."""
    a, b = _pair(a, b)
    if min(a.shape[-2:]) < window:
        raise ValueError(
            f"images must be at least {window}x{window} for SSIM; got {tuple(a.shape[-2:])}"
        )
    c1, c2 = 0.01**2, 0.03**2
    g = _gaussian_window(window, sigma, a.device)
    x, y = a.double().flatten(0, 1)[:, None], b.double().flatten(0, 1)[:, None]  # [B*3, 1, H, W]

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        t = F.conv2d(t, g.view(1, 1, -1, 1))
        return F.conv2d(t, g.view(1, 1, 1, -1))

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.view(a.shape[0], -1).mean(1).float()


# ----------------------------------------------------------------------------- LPIPS
class LPIPS(nn.Module):
    """LPIPS-VGG (Zhang et al. 2018): VGG-16 features, unit-normalised, linear-weighted distances.

    The one LPIPS network of the library: ``forward`` is the metric (validated inputs, no
    gradients, ``[B]``), ``distance`` the differentiable form the training loss
    (``visualtok.train.losses.PerceptualLoss``) uses.

    Weights come from one file (safetensors, or a ``torch.save`` dict read with weights_only=True)
    holding torchvision's ``vgg16().features`` keys (prefixed ``features.``, ``vgg.`` or ``net.``,
    or bare) and the five linear layers as ``lin{0..4}.weight`` ``[1, C, 1, 1]`` (the layout of
    the ``lpips`` package's ``vgg.pth``, whose ``linK.model.1.weight`` names are accepted too).
    Inputs in [0, 1] are mapped to [-1, 1] and shifted/scaled by the LPIPS constants.
    """

    _taps = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    _channels = (64, 128, 256, 512, 512)

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])[: self._taps[-1] + 1]  # VGG-16 conv stack
        self.lins = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, c, 1, 1)) for c in self._channels]
        )
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self._load(Path(weights))
        self.eval().requires_grad_(False)

    def _load(self, path: Path) -> None:
        from ..convert import read_official_state_dict

        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights not found: {path}")
        feats, lin = {}, {}
        for k, v in read_official_state_dict(path).items():
            if k.startswith("lin"):  # lin{k}.weight, or the official lin{k}.model.1.weight
                lin[f"lins.{k[3]}"] = v
                continue
            k = k.removeprefix("net.").removeprefix("vgg.").removeprefix("features.")
            if k.split(".")[0].isdigit():
                feats[k] = v
        missing = [f"lins.{k}" for k in range(len(self._channels)) if f"lins.{k}" not in lin]
        if missing:
            raise ValueError(
                f"{path}: LPIPS weights lack linear layers {missing} (keys lin0..lin4.weight)"
            )
        self.features.load_state_dict(feats, strict=True)
        for k in range(len(self._channels)):
            self.lins[k].data.copy_(lin[f"lins.{k}"].reshape(1, -1, 1, 1))

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS per image ``[B]`` of ``[B, 3, H, W]`` pairs on the [0, 1] scale, differentiable.

        No input checks: the training loss feeds unclamped reconstructions.
        """
        x = (torch.cat([a, b]).float() * 2 - 1 - self.shift) / self.scale
        total = x.new_zeros(a.shape[0])
        k = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._taps[k]:
                fa, fb = x.chunk(2)
                na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + ((na - nb).pow(2) * self.lins[k]).sum(1).mean((-2, -1))
                k += 1
        return total

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS per image: ``[B, 3, H, W]`` x2 in [0, 1] (or uint8) -> ``[B]``."""
        a, b = _pair(a, b)
        return self.distance(a, b)


def lpips(a: torch.Tensor, b: torch.Tensor, weights: str | Path | None = None) -> torch.Tensor:
    """LPIPS-VGG per image ``[B]``; raises ``MetricUnavailable`` when no weights file is given."""
    if weights is None:
        raise MetricUnavailable(
            "LPIPS needs pretrained VGG-16 + LPIPS linear weights, which are not available offline "
            "here. Pass weights=<file> (see visualtok.metrics.image.LPIPS for the layout). "
            "LPIPS is "
            "NOT computed and no other metric is substituted for it."
        )
    return LPIPS(weights).to(a.device)(a, b)


# ----------------------------------------------------------------------------- codes
@torch.no_grad()
def code_statistics(quantizer: Quantizer, codes: torch.Tensor) -> dict[str, object]:
    """JSON-ready usage report of ``codes [B, *S, F]``: usage, perplexity, entropy, bits.

    Usage depends on how many tokens it was measured on: 24 images of 128 tokens cannot show more
    than 3,072 of 4,096 codes. So the report carries ``num_tokens`` (per factor: ``B * prod(S)``)
    and, per factor, ``max_possible_used = min(codebook size, num_tokens)`` with
    ``usage_of_possible = used / max_possible_used`` and ``perplexity_of_possible = perplexity /
    max_possible_used`` (both 1.0 for a set that uses every code it could, equally often). The
    top-level ``usage``, ``usage_of_possible`` and ``perplexity_of_possible`` are means over
    factors; ``used`` and ``codebook_size`` are sums over factors; ``perplexity`` is the product.

    ``bits_per_image`` is ``bits_per_token * prod(S)`` (the layout's capacity, not the entropy);
    ``entropy_bits_per_token`` is the empirical entropy summed over factors.
    """
    codes = quantizer.layout.validate(codes)
    rep = quantizer.usage(codes)
    tokens_per_image = math.prod(codes.shape[1:-1])
    num_tokens = int(codes.shape[0]) * tokens_per_image
    factors = []
    for f in rep["factors"]:
        f = {k: v for k, v in f.items() if k != "histogram"}
        possible = max(1, min(int(f["radix"]), num_tokens))
        f.update(max_possible_used=possible, usage_of_possible=f["used"] / possible,
                 perplexity_of_possible=f["perplexity"] / possible)
        factors.append(f)
    bpt = quantizer.layout.bits_per_token

    def mean(key: str) -> float:
        return sum(f[key] for f in factors) / len(factors)

    return {
        "num_images": int(codes.shape[0]),
        "tokens_per_image": tokens_per_image,
        "num_tokens": num_tokens,
        "token_shape": list(codes.shape[1:-1]),
        "radices": list(quantizer.layout.radices),
        "kind": quantizer.layout.kind,
        "bits_per_token": bpt,
        "bits_per_image": bpt * tokens_per_image,
        "used": sum(f["used"] for f in factors),
        "codebook_size": sum(int(f["radix"]) for f in factors),
        "max_possible_used": sum(f["max_possible_used"] for f in factors),
        "usage": rep["usage"],
        "usage_of_possible": mean("usage_of_possible"),
        "perplexity": rep["perplexity"],
        "perplexity_of_possible": mean("perplexity_of_possible"),
        "entropy_bits_per_token": rep["entropy_bits"],
        "factors": factors,
    }
