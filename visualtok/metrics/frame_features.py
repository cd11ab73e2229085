"""Frozen per-frame feature extractors for video token reduction (VQToken) and its proxy metrics.

Each extractor maps a video ``[T, 3, H, W]`` in [0, 1] to frame-token features ``[T, N, D]`` (N
tokens per frame on a spatial grid). VQToken's paper used LLaVA-OneVision's SigLIP (27x27 = 729
tokens, projected to 896-d); no SigLIP weights can be had here, so the defaults are:

* ``InceptionSpatialFeatures``: the standard FID Inception-v3 (the ``eval`` extra's TorchScript,
  the one ImageNet-pretrained network available offline), its spatial maps ``mixed_7``
  (17x17 = 289 tokens x 768) or ``mixed_10`` (8x8 = 64 tokens x 2048), labelled "Inception
  features" wherever reported;
* ``TokenizerFeatures``: a visualtok image tokenizer's encoder, e.g. the shipped
  ``titok_photo128`` (its ViT patch outputs, 16x16 = 256 tokens x 256, or its 1D latents);
* ``PixelPatchFeatures``: no weights, a fixed random linear map of pixel patches (a sanity
  baseline with the paper's token grid shape).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..video.io import check_video
from .inception import resize_tf1_bilinear, resolve_inception_weights

__all__ = ["InceptionSpatialFeatures", "TokenizerFeatures", "PixelPatchFeatures"]

_INCEPTION_LAYERS = {"mixed_7": (17, 768), "mixed_10": (8, 2048)}


class InceptionSpatialFeatures(nn.Module):
    """FID Inception-v3 spatial maps: ``[T, 3, H, W]`` -> ``[T, g*g, C]`` (frames at 299)."""

    def __init__(self, layer: str = "mixed_7", weights: str | Path | None = None,
                 batch_size: int = 16) -> None:
        super().__init__()
        if layer not in _INCEPTION_LAYERS:
            raise ValueError(f"layer must be one of {sorted(_INCEPTION_LAYERS)}; got {layer!r}")
        net = torch.jit.load(str(resolve_inception_weights(weights)), map_location="cpu").eval()
        children = list(net.net.layers.named_children())
        stop = [name for name, _ in children].index(layer)
        self.layers = nn.ModuleList(m for _, m in children[: stop + 1])
        self.requires_grad_(False)
        self.layer, self.batch_size = layer, batch_size
        self.grid, self.feature_dim = _INCEPTION_LAYERS[layer]

    def train(self, mode: bool = True) -> InceptionSpatialFeatures:  # frozen: BN stats fixed
        return super().train(False)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        v = check_video(video, "video", batched=False)
        out = []
        for chunk in v.split(self.batch_size):
            x = (chunk * 255.0).round()  # the FID protocol: uint8 values, TF1 resize, (x-128)/128
            x = (resize_tf1_bilinear(x, (299, 299)) - 128.0) / 128.0
            for m in self.layers:
                x = m(x)
            out.append(x.flatten(2).transpose(1, 2).float())
        return torch.cat(out)


class TokenizerFeatures(nn.Module):
    """A visualtok image tokenizer's encoder, per frame: ``[T, 3, H, W]`` -> ``[T, N, D]``.

    ``which="patches"``: a TiTok encoder's ViT outputs at the patch positions (``ln_post``
    applied), a spatial grid; ``which="latents"``: ``encode_latents`` (the pre-quantizer tokens,
    any tokenizer). Frames are centre-cropped and resized to the tokenizer's input size.
    """

    def __init__(self, tokenizer: nn.Module, which: str = "patches", batch_size: int = 16) -> None:
        super().__init__()
        if which not in ("patches", "latents"):
            raise ValueError(f"which must be 'patches' or 'latents'; got {which!r}")
        if which == "patches" and not hasattr(getattr(tokenizer, "encoder", None), "hidden"):
            raise ValueError(f"which='patches' needs a TiTok-style encoder; "
                             f"{type(tokenizer).__name__} has none (use which='latents')")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.which, self.batch_size = which, batch_size

    def train(self, mode: bool = True) -> TokenizerFeatures:
        return super().train(False)

    def _patches(self, frames: torch.Tensor) -> torch.Tensor:
        enc, tok = self.tokenizer.encoder, self.tokenizer
        rows = slice(1, 1 + enc.grid_size**2)  # the patch positions
        return enc.ln_post(enc.hidden(frames.to(tok.latent_tokens.dtype), tok.latent_tokens, rows))

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        from ..data.image_io import center_crop_resize

        v = check_video(video, "video", batched=False)
        size = tuple(self.tokenizer.image_size)
        out = []
        for chunk in v.split(self.batch_size):
            frames = center_crop_resize(chunk, size) if chunk.shape[-2:] != size else chunk
            feats = self._patches(frames) if self.which == "patches" else (
                self.tokenizer.encode_latents(frames))
            out.append(feats.float())
        return torch.cat(out)


class PixelPatchFeatures(nn.Module):
    """No weights: ``patch`` x ``patch`` pixel patches through one fixed random linear map.

    With ``grid=27, patch=14, dim=896`` it has the paper's SigLIP token layout (frames resized and
    centre-cropped to 378).
    """

    def __init__(self, grid: int = 27, patch: int = 14, dim: int = 896, seed: int = 0) -> None:
        super().__init__()
        self.grid, self.patch, self.feature_dim = grid, patch, dim
        w = torch.randn(3 * patch * patch, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("weight", w / (3 * patch * patch) ** 0.5)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        from ..data.image_io import center_crop_resize

        v = check_video(video, "video", batched=False)
        side = self.grid * self.patch
        if v.shape[-2:] != (side, side):
            v = center_crop_resize(v, side)
        p = F.unfold(v, self.patch, stride=self.patch)  # [T, 3*p*p, g*g]
        return (p.transpose(1, 2) - 0.5) @ self.weight
