"""TiTok-3D: a 1D spatio-temporal video tokenizer (ours), TiTok's design over tubelets.

A clip ``[B, T, 3, H, W]`` in [0, 1] is cut into tubelets of ``t x p x p`` (e.g. 4 x 8 x 8), each
embedded linearly (a strided ``Conv3d``) with a 3D position embedding, either *factorised*
(``pos_t[i] + pos_h[j] + pos_w[k]``, few parameters) or *learned* (one row per tubelet). N learned
latent queries are appended; the ViT encoder (the image path's ``visualtok.nn.vit`` blocks) keeps
their N outputs, projected to ``token_size`` channels and quantized by any family of the core.
The decoder reads [one mask token per tubelet (+ its 3D position), the k <= N latents] through a
ViT and maps each mask output linearly to the tubelet's ``t * p * p * 3`` pixels. It decodes any
prefix of the tokens (nested dropout in training gives flexible length).

Codes are ``[B, N, F]`` (the zoo's ``(B, *S, F)`` with a 1D layout), so the generator trains on
them like on TiTok's. The closest published designs are LARP (ViT-B, 1024 queries, VQ 8192x16)
and VideoFlexTok; this is a small, CPU-trainable member of that family, not a reproduction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..config import PositiveInt
from ..image.base import ImageTokenizer, token_size_config
from ..nn.linear import Linear
from ..nn.vit import Transformer, ViTSizes
from ..quantize.config import QuantizerConfig, build_quantizer
from ..registry import register_model, register_model_class
from .io import check_video

__all__ = ["TiTok3DConfig", "TiTok3D", "check_clip", "video_to_tubelets", "tubelets_to_video"]


@dataclass
class TiTok3DConfig(ViTSizes):
    """Constructor arguments of ``TiTok3D`` (one-to-one with YAML / config.json)."""

    num_frames: PositiveInt = 16  # T of the input clips
    image_size: PositiveInt = 128  # square frame side H = W
    # (frames, height, width) per tubelet
    tubelet: tuple[PositiveInt, PositiveInt, PositiveInt] = (4, 8, 8)
    # "factorized" (t + h + w tables) | "learned" (one per tubelet)
    pos_embed: Literal["factorized", "learned"] = "factorized"
    # encoder_/decoder_ width, depth, heads and mlp_ratio: ``ViTSizes``
    num_latent_tokens: PositiveInt = 128
    token_size: PositiveInt = 12
    quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig(
            type="vq", dim=12, codebook_size=4096, l2_normalize=True
        )
    )

    def validate(self) -> TiTok3DConfig:
        super().validate()
        tt, th, tw = self.tubelet
        if self.num_frames % tt:
            raise ValueError(f"TiTok3DConfig.num_frames {self.num_frames} must be a multiple of "
                             f"the tubelet's {tt} frames (tubelet[0])")
        if self.image_size % th or self.image_size % tw:
            raise ValueError(f"TiTok3DConfig.image_size {self.image_size} must be a multiple of "
                             f"the tubelet's {th}x{tw} pixels (tubelet[1:])")
        self.quantizer.validate()
        if self.quantizer.dim != self.token_size:
            raise ValueError(f"quantizer.dim {self.quantizer.dim} must equal token_size "
                             f"{self.token_size}")
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        tt, th, tw = self.tubelet
        return self.num_frames // tt, self.image_size // th, self.image_size // tw


def check_clip(video: object, config: TiTok3DConfig, name: str = "video") -> torch.Tensor:
    """Validate a batch ``[B, T, 3, H, W]`` for this config; float [0, 1] or uint8 -> float."""
    if isinstance(video, torch.Tensor) and video.ndim == 5 and video.shape[2] != 3 and (
            video.shape[1] == 3):
        raise ValueError(f"{name} looks channel-first [B, 3, T, H, W] {tuple(video.shape)}; "
                         "visualtok videos are [B, T, 3, H, W]: use video.transpose(1, 2)")
    v = check_video(video, name, batched=True)
    t, s, tt = config.num_frames, config.image_size, config.tubelet[0]
    if v.shape[1] % tt:
        raise ValueError(f"{name} has T={v.shape[1]} frames, not a multiple of the tubelet's {tt} "
                         f"(this model takes T={t}; pad or trim the clip)")
    if tuple(v.shape[1:]) != (t, 3, s, s):
        raise ValueError(f"{name} must be [B, {t}, 3, {s}, {s}]; got {tuple(v.shape)}")
    return v


class _PosEmbed3D(nn.Module):
    """3D position table ``[gt*gh*gw, w]``: factorised sum of per-axis tables, or learned rows."""

    def __init__(self, grid: tuple[int, int, int], width: int, kind: str) -> None:
        super().__init__()
        self.grid, self.kind = grid, kind
        scale = width**-0.5
        if kind == "factorized":
            self.t = nn.Parameter(scale * torch.randn(grid[0], width))
            self.h = nn.Parameter(scale * torch.randn(grid[1], width))
            self.w = nn.Parameter(scale * torch.randn(grid[2], width))
        else:
            self.table = nn.Parameter(scale * torch.randn(grid[0] * grid[1] * grid[2], width))

    def forward(self) -> torch.Tensor:
        if self.kind == "learned":
            return self.table
        return (self.t[:, None, None] + self.h[None, :, None] + self.w[None, None]).flatten(0, 2)


class _Encoder(nn.Module):
    def __init__(self, cfg: TiTok3DConfig) -> None:
        super().__init__()
        w, n = cfg.encoder_width, cfg.num_latent_tokens
        self.num_latent_tokens = n
        self.patch_embed = nn.Conv3d(3, w, cfg.tubelet, stride=cfg.tubelet)
        self.pos = _PosEmbed3D(cfg.grid, w, cfg.pos_embed)
        self.latent_pos = nn.Parameter(w**-0.5 * torch.randn(n, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.encoder_depth, cfg.encoder_heads, cfg.mlp_ratio)
        self.ln_post = nn.LayerNorm(w)
        self.proj = Linear(w, cfg.token_size)

    def forward(self, video: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        x = self.patch_embed(video.transpose(1, 2)).flatten(2).transpose(1, 2)  # [B, G, w]
        x = x + self.pos()
        latents = (latent_tokens + self.latent_pos).expand(b, -1, -1).to(x.dtype)
        x = self.transformer(self.ln_pre(torch.cat([x, latents], 1)))
        return self.proj(self.ln_post(x[:, -self.num_latent_tokens:]))


class _Decoder(nn.Module):
    def __init__(self, cfg: TiTok3DConfig) -> None:
        super().__init__()
        w = cfg.decoder_width
        self.cfg = cfg
        self.embed = Linear(cfg.token_size, w)
        self.latent_pos = nn.Parameter(w**-0.5 * torch.randn(cfg.num_latent_tokens, w))
        self.mask_token = nn.Parameter(w**-0.5 * torch.randn(1, 1, w))
        self.pos = _PosEmbed3D(cfg.grid, w, cfg.pos_embed)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
        self.ln_post = nn.LayerNorm(w)
        tt, th, tw = cfg.tubelet
        self.head = Linear(w, tt * th * tw * 3)  # linear tubelet-to-pixel head

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        b, k, _ = z_q.shape
        x = self.embed(z_q) + self.latent_pos[:k]
        masks = (self.mask_token + self.pos()).to(x.dtype).expand(b, -1, -1)
        g = masks.shape[1]
        x = self.transformer(self.ln_pre(torch.cat([masks, x], 1)))
        out = self.head(self.ln_post(x[:, :g]))  # [B, G, tt*th*tw*3] in (tt, th, tw, c) order
        return tubelets_to_video(out, self.cfg.grid, self.cfg.tubelet)


def video_to_tubelets(video: torch.Tensor, tubelet: tuple[int, int, int]) -> torch.Tensor:
    """``[B, T, 3, H, W]`` -> ``[B, G, tt*th*tw*3]``: tubelets in (t, h, w) raster order (the
    ``Conv3d`` flatten order), pixels inside in (tt, th, tw, c) order."""
    b, t, c, h, w = video.shape
    tt, th, tw = tubelet
    x = video.reshape(b, t // tt, tt, c, h // th, th, w // tw, tw)
    return x.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(b, -1, tt * th * tw * c)


def tubelets_to_video(x: torch.Tensor, grid: tuple[int, int, int],
                      tubelet: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of ``video_to_tubelets``: ``[B, G, tt*th*tw*3]`` -> ``[B, T, 3, H, W]``."""
    (gt, gh, gw), (tt, th, tw) = grid, tubelet
    x = x.reshape(x.shape[0], gt, gh, gw, tt, th, tw, 3)
    return x.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(x.shape[0], gt * tt, 3, gh * th, gw * tw)


@register_model_class
class TiTok3D(ImageTokenizer):
    """1D video tokenizer: ``[B, T, 3, H, W]`` -> codes ``[B, N, F]`` -> ``[B, T, 3, H, W]``.
    TiTok's encoder and decoder over space-time tubelets; ``TiTok3D(TiTok3DConfig(...))``."""

    config_class = TiTok3DConfig
    supports_prefix = True

    def __init__(self, config: TiTok3DConfig) -> None:
        super().__init__(config)
        self.latent_tokens = nn.Parameter(
            config.encoder_width**-0.5 * torch.randn(config.num_latent_tokens, config.encoder_width)
        )
        self.encoder = _Encoder(config)
        self.decoder = _Decoder(config)
        self.quantizer = build_quantizer(config.quantizer)

    # ------------------------------------------------------------------ description
    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def token_shape(self) -> tuple[int, ...]:
        return (self.config.num_latent_tokens,)

    @property
    def bits_per_clip(self) -> float:
        return self.num_tokens * self.code_layout.bits_per_token

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, 3, H, W]`` in [0, 1] -> pre-quantizer latents ``[B, N, D]``."""
        return self.encoder(video.to(self.latent_tokens.dtype), self.latent_tokens)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, k, D]`` (k <= N, a prefix) -> ``[B, T, 3, H, W]``, [0, 1] scale, unclamped."""
        n, d = self.config.num_latent_tokens, self.config.token_size
        if z_q.ndim != 3 or z_q.shape[-1] != d or not 1 <= z_q.shape[1] <= n:
            raise ValueError(f"latents must be [B, k, {d}] with 1 <= k <= {n}; got "
                             f"{tuple(z_q.shape)}")
        return self.decoder(z_q)

    def last_layer_weight(self) -> torch.Tensor:
        return self.decoder.head.weight

    def check_input(self, video: object) -> torch.Tensor:
        """``[B, T, 3, H, W]`` (float [0, 1] or uint8) of this config -> float; ``encode``,
        ``decode`` and ``forward`` are the ``ImageTokenizer`` ones over clips."""
        return check_clip(video, self.config)


# ---------------------------------------------------------------------- presets
def titok3d_config(base: dict[str, Any], overrides: dict[str, Any]) -> TiTok3DConfig:
    """Merge a preset with overrides (``image.base.token_size_config``'s rule)."""
    return token_size_config(TiTok3DConfig, base, overrides)


def _preset(base: dict[str, Any], overrides: dict[str, Any]) -> TiTok3D:
    return TiTok3D(titok3d_config(base, overrides))


@register_model(task="video-tokenizer")
def titok3d_tiny(**overrides: Any) -> TiTok3D:
    """CPU-trainable: 8 frames of 32x32, tubelets 4x8x8 (32), width 64, 2+2 layers, 16 tokens,
    FSQ 8-5-5-5 (1000 codes)."""
    base = dict(num_frames=8, image_size=32, tubelet=(4, 8, 8), encoder_width=64,
                encoder_depth=2, encoder_heads=4, decoder_width=64, decoder_depth=2,
                decoder_heads=4, num_latent_tokens=16, token_size=4,
                quantizer=dict(type="fsq", levels=(8, 5, 5, 5)))
    return _preset(base, overrides)


@register_model(task="video-tokenizer")
def titok3d_s128(**overrides: Any) -> TiTok3D:
    """16 frames of 128x128, tubelets 4x8x8 (1024), TiTok-S ViTs (512/8/8), 128 tokens, VQ 4096x12
    cosine."""
    base = dict(num_frames=16, image_size=128, tubelet=(4, 8, 8), num_latent_tokens=128,
                quantizer=dict(type="vq", codebook_size=4096, l2_normalize=True))
    return _preset(base, overrides)


@register_model(task="video-tokenizer")
def titok3d_b256(**overrides: Any) -> TiTok3D:
    """16 frames of 256x256, tubelets 4x16x16 (1024), TiTok-B ViTs (768/12/12), 256 tokens,
    VQ 8192x16 (LARP's codebook shape)."""
    base = dict(num_frames=16, image_size=256, tubelet=(4, 16, 16), encoder_width=768,
                encoder_depth=12, encoder_heads=12, decoder_width=768, decoder_depth=12,
                decoder_heads=12, num_latent_tokens=256, token_size=16,
                quantizer=dict(type="vq", codebook_size=8192, l2_normalize=True))
    return _preset(base, overrides)
