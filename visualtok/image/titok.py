"""TiTok: a 1D image tokenizer ("An Image is Worth 32 Tokens for Reconstruction and Generation").

Yu et al., NeurIPS 2024 (arXiv:2406.07550); official code and weights: bytedance/1d-tokenizer
(Apache-2.0), checkpoints ``yucornetto/tokenizer_titok_{s128,b64,l32}_imagenet`` (two-stage, VQ
4096x12), ``..._{sl256,bl128,bl64}_vq8k_imagenet`` (single-stage, VQ 8192x64) and
``..._{ll32,bl64,bl128}_vae_c16_imagenet`` (continuous KL, 16 channels).

A ViT encoder reads the 16x16 patches plus N learned ``latent_tokens`` (own position table, appended
after the patches) and keeps the last N outputs, projected to ``token_size`` channels and quantized.
A ViT decoder reads [CLS, one mask token per patch, the N latents] and maps the patch outputs to
pixels, either directly (1x1 conv to p*p*3, unpatchify, 3x3 conv) or, for the paper checkpoints,
through logits over MaskGIT-VQGAN "proxy codes" whose softmax weights that codebook, feeding the
MaskGIT-VQGAN CNN decoder. The paper checkpoints also carry the *legacy reshape*: the encoder's
``[B, N, width]`` outputs are reinterpreted (not transposed) as ``[B, width, N, 1]`` before the 1x1
conv. Latents are channels-last ``[B, N, D]`` here and go through the shared quantizer core, so any
family (VQ, FSQ, LFQ, PTQ on the VAE posterior) plugs in. The decoder accepts a prefix of the N
tokens; with all N it computes exactly what the official code computes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..config import (
    NonNegativeFloat,
    PositiveInt,
    Radix,
)
from ..nn.linear import Linear, linear
from ..nn.vit import Transformer, ViTSizes
from ..quantize.base import QuantOutput
from ..quantize.config import QuantizerConfig, build_quantizer
from ..registry import PretrainedRecord, register_model, register_model_class
from .base import ImageTokenizer, check_images, token_size_config
from .maskgit_vqgan import MaskGITPixelDecoder

__all__ = ["TiTokConfig", "TiTokEncoder", "TiTokDecoder", "TiTok", "VIT_SIZES", "titok_config"]

log = logging.getLogger(__name__)

_NO_PTQ = "this continuous TiTok has no quantizer: configure quantizer type 'ptq' to tokenize it"

# width, depth, heads of the official ViT sizes
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (512, 8, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


@dataclass
class TiTokConfig(ViTSizes):
    """Constructor arguments of ``TiTok`` (one-to-one with YAML / config.json)."""

    image_size: PositiveInt = 256  # square input side H = W
    patch_size: PositiveInt = 16  # encoder and decoder patch size
    # encoder_/decoder_ width, depth, heads and mlp_ratio: ``ViTSizes``
    num_latent_tokens: PositiveInt = 128  # N 1D tokens
    # D channels per token fed to the quantizer (VAE: posterior channels)
    token_size: PositiveInt = 12
    is_legacy: bool = False  # paper checkpoints: read [B, N, W] as [B, W, N, 1], no transpose
    # "vq": quantized latents; "vae": KL posterior (encoder emits 2*D moments)
    mode: Literal["vq", "vae"] = "vq"
    # "pixel": RGB head; "proxy_codes": MaskGIT-VQGAN code logits
    decoder_head: Literal["pixel", "proxy_codes"] = "pixel"
    pixel_decoder: bool = False  # proxy_codes: softmax-weighted codebook -> MaskGIT CNN
    pixel_decoder_channels: PositiveInt = 128  # MaskGIT-VQGAN decoder base width
    proxy_codebook_size: Radix = 1024  # MaskGIT-VQGAN codebook (K x 256)
    proxy_code_dim: PositiveInt = 256
    # VAE mode: weight of the KL term in losses["total"] (official 1e-6)
    kl_weight: NonNegativeFloat = 1e-6
    quantizer: QuantizerConfig | None = field(
        default_factory=lambda: QuantizerConfig(
            type="vq", dim=12, codebook_size=4096, l2_normalize=True
        )
    )  # VQ / FSQ / LFQ in vq mode; optional PTQ on the posterior mean in vae mode

    def validate(self) -> TiTokConfig:
        super().validate()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TiTokConfig.image_size {self.image_size} must be a multiple of "
                f"patch_size {self.patch_size}"
            )
        if self.pixel_decoder and self.decoder_head != "proxy_codes":
            raise ValueError("TiTokConfig.pixel_decoder=True needs decoder_head='proxy_codes'")
        if self.mode == "vq" and self.quantizer is None:
            raise ValueError("mode 'vq' needs a quantizer config")
        if self.quantizer is not None:
            if self.quantizer.dim != self.token_size:
                raise ValueError(
                    f"quantizer.dim {self.quantizer.dim} must equal token_size {self.token_size}"
                )
            if self.mode == "vae" and self.quantizer.type != "ptq":
                raise ValueError(
                    f"mode 'vae' tokenizes with post-training quantization (type 'ptq'); "
                    f"got quantizer type {self.quantizer.type!r}"
                )
        return self


def _linear_1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 ``Conv2d`` to channels-last ``x: [..., C_in]`` as a matmul (same weights)."""
    return linear(x, conv.weight.flatten(1), conv.bias)


class TiTokEncoder(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] + latent tokens ``[N, W]`` -> ``[B, N, out_channels]``."""

    def __init__(self, cfg: TiTokConfig, out_channels: int) -> None:
        super().__init__()
        w, n = cfg.encoder_width, cfg.num_latent_tokens
        self.width, self.num_latent_tokens, self.is_legacy = w, n, cfg.is_legacy
        self.grid_size = cfg.image_size // cfg.patch_size
        scale = w**-0.5
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, w))
        self.latent_token_positional_embedding = nn.Parameter(scale * torch.randn(n, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.encoder_depth, cfg.encoder_heads, cfg.mlp_ratio)
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, out_channels, 1)

    def hidden(
        self, images: torch.Tensor, latent_tokens: torch.Tensor, keep: slice | None = None
    ) -> torch.Tensor:
        """The ViT's outputs (before ``ln_post``) over [CLS, G*G patches, N latents], ``[B,
        1 + G*G + N, W]``, or only its ``keep`` rows (the last block then computes only those)."""
        B = images.shape[0]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, G*G, W]
        cls = (self.class_embedding + self.positional_embedding[:1]).expand(B, -1, -1)
        latents = (latent_tokens + self.latent_token_positional_embedding).expand(B, -1, -1)
        x = torch.cat([cls, x + self.positional_embedding[1:], latents.to(x.dtype)], dim=1)
        return self.transformer(self.ln_pre(x), keep=keep)

    def forward(self, images: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        x = self.hidden(images, latent_tokens, keep=slice(-self.num_latent_tokens, None))
        # ln_post and the projection feed the quantizer: keep them in the weights' precision under
        # autocast (bf16 here flips ~0.5% more VQ codes for a negligible cost).
        with torch.autocast(x.device.type, enabled=False):
            x = self.ln_post(x.to(self.conv_out.weight.dtype))
            if self.is_legacy:
                # Official quirk: the contiguous [B, N, W] block is read as [B, W, N] (no
                # transpose); as channels-last "tokens" that is reshape(B, W, N).transpose(1, 2).
                x = x.reshape(B, self.width, self.num_latent_tokens).transpose(1, 2)
            return _linear_1x1(self.conv_out, x)  # [B, N, out_channels]


class TiTokDecoder(nn.Module):
    """Latents ``[B, k, D]`` (k <= N, a prefix) -> patch features ``[B, G*G, W]`` -> head output."""

    def __init__(self, cfg: TiTokConfig) -> None:
        super().__init__()
        w = cfg.decoder_width
        self.width, self.patch_size, self.head = w, cfg.patch_size, cfg.decoder_head
        self.grid_size = cfg.image_size // cfg.patch_size
        scale = w**-0.5
        self.decoder_embed = Linear(cfg.token_size, w)
        self.class_embedding = nn.Parameter(scale * torch.randn(1, w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, w))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1, w))
        self.latent_token_positional_embedding = nn.Parameter(
            scale * torch.randn(cfg.num_latent_tokens, w)
        )
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.decoder_depth, cfg.decoder_heads, cfg.mlp_ratio)
        self.ln_post = nn.LayerNorm(w)
        if self.head == "proxy_codes":  # 1x1 conv 2W, tanh, 1x1 conv to proxy-code logits
            self.ffn = nn.Sequential(
                nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, cfg.proxy_codebook_size, 1)
            )
        else:  # 1x1 conv to p*p*3 (channel order p1, p2, c), unpatchify, 3x3 conv
            self.ffn = nn.Sequential(nn.Conv2d(w, cfg.patch_size**2 * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def features(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, k, D]`` -> ln_post'ed mask-token outputs ``[B, G*G, W]``."""
        B, k, _ = z_q.shape
        x = self.decoder_embed(z_q) + self.latent_token_positional_embedding[:k]
        masks = self.mask_token.expand(1, self.grid_size**2, -1)
        queries = torch.cat([self.class_embedding[None], masks], dim=1)
        queries = (queries + self.positional_embedding).to(x.dtype).expand(B, -1, -1)
        x = self.ln_pre(torch.cat([queries, x], dim=1))
        return self.ln_post(self.transformer(x, keep=slice(1, 1 + self.grid_size**2)))

    def proxy_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, G*G, W]`` -> logits over the proxy codes ``[B, G*G, K]`` (proxy_codes head)."""
        return _linear_1x1(self.ffn[2], torch.tanh(_linear_1x1(self.ffn[0], feats)))

    def pixels(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, G*G, W]`` -> pixels ``[B, 3, H, W]`` (pixel head)."""
        B, g, p = feats.shape[0], self.grid_size, self.patch_size
        x = _linear_1x1(self.ffn[0], feats).view(B, g, g, p, p, 3)  # (h, w, p1, p2, c)
        x = x.permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)
        return self.conv_out(x)


@register_model_class
class TiTok(ImageTokenizer):
    """TiTok 1D tokenizer. See the module docstring; ``TiTok(TiTokConfig(...))``."""

    config_class = TiTokConfig
    supports_prefix = True

    def __init__(self, config: TiTokConfig) -> None:
        super().__init__(config)
        self.continuous = config.mode == "vae"
        enc_out = 2 * config.token_size if self.continuous else config.token_size
        self.latent_tokens = nn.Parameter(
            config.encoder_width**-0.5 * torch.randn(config.num_latent_tokens, config.encoder_width)
        )
        self.encoder = TiTokEncoder(config, enc_out)
        self.decoder = TiTokDecoder(config)
        self.quantizer = build_quantizer(config.quantizer) if config.quantizer is not None else None
        if config.pixel_decoder:
            self.pixel_quantize = nn.Module()  # the MaskGIT-VQGAN codebook, official key names
            self.pixel_quantize.embedding = nn.Embedding(
                config.proxy_codebook_size, config.proxy_code_dim
            )
            self.pixel_decoder = MaskGITPixelDecoder(
                config.proxy_code_dim, config.pixel_decoder_channels
            )

    # ------------------------------------------------------------------ description
    @property
    def token_shape(self) -> tuple[int, ...]:
        return (self.config.num_latent_tokens,)

    @property
    def decoded_size(self) -> tuple[int, int]:
        """(H, W) of decoded images: the input size, except with the MaskGIT-VQGAN pixel decoder,
        which upsamples the patch grid by 16 whatever the patch size (as the official code)."""
        if self.config.pixel_decoder:
            side = self.decoder.grid_size * 16
            return (side, side)
        return self.image_size

    @property
    def code_layout(self):
        if self.quantizer is None:
            raise ValueError(_NO_PTQ)
        return self.quantizer.layout

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images [0, 1] ``[B, 3, H, W]`` -> ``[B, N, D]`` (VAE mode: moments ``[B, N, 2D]``)."""
        return self.encoder(images.to(self.latent_tokens.dtype), self.latent_tokens)

    def quantize(self, z: torch.Tensor) -> QuantOutput:
        """VQ mode: the quantizer. VAE mode: posterior sample (train) / mean (eval) + KL loss."""
        if not self.continuous:
            return self.quantizer(z)
        mean, logvar = z.float().chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)
        z_c = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / z.shape[0]
        codes = self.quantizer.encode(mean) if self.quantizer is not None else mean.new_zeros(
            (*mean.shape[:-1], 0), dtype=torch.long)
        return QuantOutput(
            z_q=z_c.to(z.dtype), codes=codes,
            losses={"kl": kl, "total": self.config.kl_weight * kl},
            stats={"posterior_std": torch.exp(0.5 * logvar).mean().detach()},
        )

    def _latents_for_codes(self, z: torch.Tensor) -> torch.Tensor:
        if self.quantizer is None:
            raise ValueError(_NO_PTQ)
        return z.chunk(2, dim=-1)[0] if self.continuous else z

    def posterior_mean(self, images: torch.Tensor) -> torch.Tensor:
        """VAE mode: the continuous latents ``[B, N, D]`` (the posterior mean) of ``images``."""
        if not self.continuous:
            raise ValueError("posterior_mean needs mode 'vae'")
        return self.encode_latents(check_images(images, self.image_size)).chunk(2, dim=-1)[0]

    def proxy_logits(self, z_q: torch.Tensor) -> torch.Tensor:
        """Stage-1 output: logits ``[B, G*G, K]`` over the MaskGIT-VQGAN proxy codes."""
        if self.config.decoder_head != "proxy_codes":
            raise ValueError("proxy_logits needs decoder_head='proxy_codes'")
        return self.decoder.proxy_logits(self.decoder.features(z_q))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, k, D]`` (k <= N) -> ``[B, 3, H, W]`` on the [0, 1] scale, not clamped."""
        n, d = self.config.num_latent_tokens, self.config.token_size
        if z_q.ndim != 3 or z_q.shape[-1] != d or not 1 <= z_q.shape[1] <= n:
            raise ValueError(
                f"latents must be [B, k, {d}] with 1 <= k <= {n}; got {tuple(z_q.shape)}"
            )
        feats = self.decoder.features(z_q)
        if self.config.decoder_head == "pixel":
            return self.decoder.pixels(feats)
        if not self.config.pixel_decoder:
            raise ValueError("a stage-1 proxy_codes TiTok has no pixel decoder: use proxy_logits")
        logits = self.decoder.proxy_logits(feats)  # [B, G*G, K]
        soft = logits.softmax(-1) @ self.pixel_quantize.embedding.weight  # [B, G*G, 256]
        g = self.decoder.grid_size
        return self.pixel_decoder(soft.transpose(1, 2).reshape(soft.shape[0], -1, g, g))

    def last_layer_weight(self) -> torch.Tensor:
        if self.config.pixel_decoder:
            return self.pixel_decoder.conv_out.weight
        if self.config.decoder_head == "pixel":
            return self.decoder.conv_out.weight
        return self.decoder.ffn[2].weight


# ---------------------------------------------------------------------- presets
_PAPER = "An Image is Worth 32 Tokens for Reconstruction and Generation (arXiv:2406.07550)"


def titok_config(base: dict[str, Any], overrides: dict[str, Any]) -> TiTokConfig:
    """Merge preset ``base`` with ``overrides`` (config field names) into a ``TiTokConfig``."""
    return token_size_config(TiTokConfig, base, overrides)


def _sizes(enc: str, dec: str) -> dict[str, Any]:
    (ew, ed, eh), (dw, dd, dh) = VIT_SIZES[enc], VIT_SIZES[dec]
    return dict(encoder_width=ew, encoder_depth=ed, encoder_heads=eh,
                decoder_width=dw, decoder_depth=dd, decoder_heads=dh)


def _paper_vq(enc: str, dec: str, tokens: int) -> dict[str, Any]:
    """Two-stage paper checkpoints: legacy reshape, VQ 4096x12 cosine, proxy codes + MaskGIT CNN."""
    return dict(_sizes(enc, dec), num_latent_tokens=tokens, token_size=12, is_legacy=True,
                decoder_head="proxy_codes", pixel_decoder=True,
                quantizer=dict(type="vq", codebook_size=4096, l2_normalize=True, beta=0.25))


def _single_stage_vq(enc: str, dec: str, tokens: int) -> dict[str, Any]:
    """Single-stage VQ-8k checkpoints: VQ 8192x64 (no l2), direct pixel head."""
    return dict(_sizes(enc, dec), num_latent_tokens=tokens, token_size=64,
                quantizer=dict(type="vq", codebook_size=8192, l2_normalize=False, beta=0.25))


def _single_stage_vae(enc: str, dec: str, tokens: int) -> dict[str, Any]:
    """Continuous KL checkpoints (16 channels); tokens via TokenBridge-style PTQ, 64 bins."""
    return dict(_sizes(enc, dec), num_latent_tokens=tokens, token_size=16, mode="vae",
                quantizer=dict(type="ptq", bins=64))


def _record(name: str, tokens: int, vocab: str, notes: str = "") -> PretrainedRecord:
    return PretrainedRecord(
        hub_id=f"yucornetto/tokenizer_titok_{name}_imagenet", filename="model.safetensors",
        format="titok", config_filename="config.json", input_size=(256, 256), input_range="[0, 1]",
        num_tokens=tokens, vocab=vocab, license="Apache-2.0", paper=_PAPER, notes=notes,
    )


def _preset(base: dict[str, Any], overrides: dict[str, Any]) -> TiTok:
    return TiTok(titok_config(base, overrides))


_VQ4K = "4096 (VQ, 12-d, l2)"
_VQ8K = "8192 (VQ, 64-d)"
_VAE = "continuous 16-d KL; PTQ 64^16 when tokenized"


# The paper checkpoints: preset name suffix -> (config builder, encoder, decoder, tokens, vocab,
# reported ImageNet rFID). Each becomes ``titok_<suffix>(**overrides)`` with its hub record.
_PAPER_PRESETS = {
    "s128": (_paper_vq, "small", "small", 128, _VQ4K, "rFID 1.71"),
    "b64": (_paper_vq, "base", "base", 64, _VQ4K, "rFID 1.70"),
    "l32": (_paper_vq, "large", "large", 32, _VQ4K, "rFID 2.21"),
    "sl256_vq8k": (_single_stage_vq, "small", "large", 256, _VQ8K, "rFID 1.03"),
    "bl128_vq8k": (_single_stage_vq, "base", "large", 128, _VQ8K, "rFID 1.49"),
    "bl64_vq8k": (_single_stage_vq, "base", "large", 64, _VQ8K, "rFID 2.06"),
    "ll32_vae_c16": (_single_stage_vae, "large", "large", 32, _VAE, "rFID 1.61"),
    "bl64_vae_c16": (_single_stage_vae, "base", "large", 64, _VAE, "rFID 1.25"),
    "bl128_vae_c16": (_single_stage_vae, "base", "large", 128, _VAE, "rFID 0.84"),
}


def _paper_preset(build, encoder: str, decoder: str, tokens: int, **overrides: Any) -> TiTok:
    return _preset(build(encoder, decoder, tokens), overrides)


for _suffix, (_build, _enc, _dec, _tokens, _vocab, _rfid) in _PAPER_PRESETS.items():
    register_model(functools.partial(_paper_preset, _build, _enc, _dec, _tokens),
                   name=f"titok_{_suffix}", pretrained=_record(_suffix, _tokens, _vocab, _rfid))
del _suffix, _build, _enc, _dec, _tokens, _vocab, _rfid


@register_model
def titok_tiny(**overrides: Any) -> TiTok:
    """CPU-trainable single-stage TiTok: 64x64, patch 8, width 128, 2+2 layers, 32 tokens, VQ 1k."""
    base = dict(image_size=64, patch_size=8, encoder_width=128, encoder_depth=2, encoder_heads=4,
                decoder_width=128, decoder_depth=2, decoder_heads=4, num_latent_tokens=32,
                token_size=12, quantizer=dict(type="vq", codebook_size=1024, l2_normalize=True))
    return _preset(base, overrides)


# ---------------------------------------------------------------------- weights shipped in weights/
def _photo128(nested: bool) -> PretrainedRecord:
    return PretrainedRecord(
        filename="model.safetensors", format="visualtok", input_size=(128, 128),
        input_range="[0, 1]", num_tokens=128, vocab=_VQ4K, license="Apache-2.0", paper=_PAPER,
        sha256=_PHOTO128_SHA256[nested],
        notes="trained by us on real photos (../shared/data/images, Kodak held out); "
        + ("nested dropout: decodes any prefix of its tokens" if nested else "default tokenizer"),
    )


_PHOTO128_SHA256 = {  # sha256 of weights/titok_photo128[_nested]/model.safetensors
    False: "613b6bcbeeaa0827bf02e045a89d7e502ece1a197442c78bba1ffbf0851cd7c7",
    True: "fc8a67c6e9c44a67d584276edd3ec2b132a84e57abfb19d17defdb6e8bad3c77",
}


def _photo128_base() -> dict[str, Any]:
    return dict(image_size=128, patch_size=8, encoder_width=256, encoder_depth=3, encoder_heads=4,
                decoder_width=256, decoder_depth=4, decoder_heads=4, num_latent_tokens=128,
                token_size=12, quantizer=dict(type="vq", codebook_size=4096, l2_normalize=True,
                                              kmeans_init=True, dead_code_threshold=0.1))


@register_model(pretrained=_photo128(False))
def titok_photo128(**overrides: Any) -> TiTok:
    """Shipped default: 128x128, patch 8, 256-wide 3+4 layers, 128 tokens, VQ 4096x12 (5.9M)."""
    return _preset(_photo128_base(), overrides)


@register_model(pretrained=_photo128(True))
def titok_photo128_nested(**overrides: Any) -> TiTok:
    """``titok_photo128`` trained with nested dropout: any prefix of the 128 tokens decodes."""
    return _preset(_photo128_base(), overrides)
