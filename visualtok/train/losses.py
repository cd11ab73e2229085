"""Tokenizer training losses: reconstruction, LPIPS perceptual, PatchGAN (hinge + LeCam).

* ``reconstruction_loss``: L1 or L2 on the [0, 1] scale.
* ``PerceptualLoss``: LPIPS (VGG16 trunk + learned 1x1 heads). It needs weights: a config with
  ``perceptual_network: lpips``, ``perceptual_weight > 0`` and no weights file is refused when it
  is built.
* ``InceptionPerceptualLoss``: "Inception perceptual loss", **not LPIPS**: distances between
  unit-normalised intermediate features of the standard FID Inception-v3 (the ``eval`` extra, the
  one pretrained ImageNet network available offline), no learned heads.
* ``PatchDiscriminator``: the PatchGAN of pix2pix/taming (``n_layers`` strided 4x4 convs,
  BatchNorm, LeakyReLU 0.2), fed images scaled to [-1, 1].
* ``hinge_d_loss``, ``hinge_g_loss``, ``LeCam`` (Tseng et al. 2021, EMA anchors of D outputs) and
  ``adaptive_gan_weight`` (Esser et al. 2021: balance GAN and reconstruction gradients at the last
  decoder layer).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.image import LPIPS

__all__ = [
    "reconstruction_loss",
    "PerceptualLoss",
    "InceptionPerceptualLoss",
    "INCEPTION_PERCEPTUAL_LABEL",
    "PatchDiscriminator",
    "hinge_d_loss",
    "hinge_g_loss",
    "LeCam",
    "adaptive_gan_weight",
]

log = logging.getLogger(__name__)


def reconstruction_loss(
    recon: torch.Tensor, target: torch.Tensor, kind: str = "l2"
) -> torch.Tensor:
    """Mean L1 (``"l1"``) or squared error (``"l2"``) between ``[B, C, ...]`` tensors."""
    if kind == "l1":
        return (recon.float() - target.float()).abs().mean()
    if kind == "l2":
        return F.mse_loss(recon.float(), target.float())
    raise ValueError(f"reconstruction loss must be 'l1' or 'l2'; got {kind!r}")


# ---------------------------------------------------------------------------- LPIPS
class PerceptualLoss(LPIPS):
    """LPIPS-VGG distance averaged over the batch. Images ``[B, 3, H, W]`` on the [0, 1] scale.

    The metric's network (``visualtok.metrics.image.LPIPS``, same weights file layout) with
    gradients flowing to ``recon`` and no range check (reconstructions are not clamped).
    """

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.distance(recon, target).mean()


# ---------------------------------------------------------------------------- Inception
INCEPTION_PERCEPTUAL_LABEL = "Inception perceptual loss (FID Inception-v3 features, not LPIPS)"


class InceptionPerceptualLoss(nn.Module):
    """Inception perceptual loss: images ``[B, 3, H, W]`` in [0, 1] -> scalar.

    The frozen FID Inception-v3 of ``train/semantic.py`` (``InceptionTeacher``, one loader for
    both) is run on ``recon`` and ``target`` resized to ``size``; at each tapped block the features
    are unit-normalised over channels (as LPIPS does, but with no learned per-channel weights),
    and the squared distance is averaged over positions; the mean over taps is returned.
    Default taps: ``conv_4`` (192 x 71 x 71 at 299), ``mixed_2`` (Mixed_5d, 288 x 35 x 35) and
    ``mixed_7`` (Mixed_6e, 768 x 17 x 17). Gradients flow to ``recon`` only.
    """

    label = INCEPTION_PERCEPTUAL_LABEL

    def __init__(self, taps: tuple[int, ...] = (5, 9, 14), size: int = 299,
                 weights: str | None = None) -> None:
        super().__init__()
        from .semantic import InceptionTeacher

        taps = tuple(int(t) for t in taps)
        if not taps or min(taps) < 0 or max(taps) > 17:
            raise ValueError(f"loss.perceptual_taps must be Inception block indices in 0..17; "
                             f"got {taps}")
        if size < 75:
            raise ValueError(f"loss.perceptual_size must be >= 75 (Inception's smallest input); "
                             f"got {size}")
        self.taps, self.size = taps, int(size)
        self.net = InceptionTeacher(weights, layers=max(taps) + 1).requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionPerceptualLoss:  # frozen batch norms
        return super().train(False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ref = self.net.features(target, self.taps, self.size)
        out = self.net.features(recon, self.taps, self.size)
        total = recon.new_zeros((), dtype=torch.float32)
        for a, b in zip(out, ref):
            a = a.float() / (a.float().norm(dim=1, keepdim=True) + 1e-10)
            b = b.float() / (b.float().norm(dim=1, keepdim=True) + 1e-10)
            total = total + (a - b).pow(2).sum(1).mean()
        return total / len(out)


# ---------------------------------------------------------------------------- GAN
class PatchDiscriminator(nn.Module):
    """PatchGAN: ``[B, 3, H, W]`` in [0, 1] -> patch logits ``[B, 1, h, w]``."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images * 2 - 1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


class LeCam(nn.Module):
    """LeCam regulariser: keep D outputs near EMA anchors of the opposite side."""

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.ema_real.lerp_(logits_real.detach().float().mean(), 1 - self.decay)
            self.ema_fake.lerp_(logits_fake.detach().float().mean(), 1 - self.decay)
        return (
            F.relu(logits_real.float() - self.ema_fake).pow(2).mean()
            + F.relu(self.ema_real - logits_fake.float()).pow(2).mean()
        )


def adaptive_gan_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """``|grad rec| / |grad gan|`` at ``last_layer`` (detached), clamped to ``[0, max_weight]``."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()
