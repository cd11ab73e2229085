"""The LlamaGen VQGAN: the standard 2D CNN image tokenizer, and the baseline of every 1D tokenizer.

Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation"
(arXiv:2406.06525); official code and weights: FoundationVision/LlamaGen (MIT), checkpoints
``vq_ds16_c2i.pt`` (VQ-16: f16, 16384 x 8, 71.9M) and ``vq_ds8_c2i.pt`` (VQ-8: f8), a ``torch.save``
dict with the weights under ``"model"``. The design is taming-transformers' VQGAN:

* **Encoder**: 3x3 ``conv_in`` (128 channels), one level per ``ch_mult`` entry with
  ``num_res_blocks`` ResnetBlocks, a single-head ``AttnBlock`` after each ResnetBlock of the lowest
  resolution, a ``Downsample`` between levels; ``mid`` = ResnetBlock, AttnBlock, ResnetBlock; then
  GroupNorm, swish and a 3x3 conv to ``z_channels``.
* ``quant_conv`` (1x1, z_channels -> 8), **l2-normalised VQ** 16384 x 8 (cosine lookup, beta 0.25)
  through the shared quantizer core, ``post_quant_conv`` (1x1, 8 -> z_channels).
* **Decoder**: the mirror, with ``num_res_blocks + 1`` ResnetBlocks per level, attention at the
  lowest resolution and in ``mid``, nearest ``Upsample`` + 3x3 conv between levels.

Images are [-1, 1] inside (users pass [0, 1]). The model is fully convolutional: any ``H, W``
divisible by ``2**(len(ch_mult) - 1)`` encode, to codes ``[B, H/f, W/f, 1]`` in raster order.
``VQGANEncoder``/``VQGANDecoder`` also carry the options ReTok's CNN stages use (no attention,
adaptive GroupNorm, depth-to-space upsampling); see ``image/retok.py``.

**bf16**: ``tok.to(torch.bfloat16)`` casts the trunk and runs it channels-last (``nn/conv.py``:
``fast_layout``); ``quant_conv`` and the quantizer stay fp32 (``keep_fp32``), so the codes are
searched on fp32 latents; 2.2-2.6x fp32 on the project's CPU. On random full-size weights 93%
(VQ-16) to 98% (ReTok-S-S) of the codes equal fp32's: each bf16 stage adds ~4e-3 relative error to
the latents, and 16384 cosine codes of 8 dimensions have near ties (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, PositiveInt, UnitFloat
from ..nn.conv import (
    AdaptiveGroupNorm,
    AttnBlock,
    D2SUpsample,
    Downsample,
    ResnetBlock,
    Upsample,
    fast_layout,
    group_norm,
)
from ..quantize.config import QuantizerConfig, build_quantizer
from ..registry import PretrainedRecord, register_model, register_model_class
from .base import ImageTokenizer, preset_config

__all__ = ["VQGANConfig", "VQGANEncoder", "VQGANDecoder", "VQGAN", "vqgan_config"]


@dataclass
class VQGANConfig(Config):
    """Constructor arguments of ``VQGAN`` (one-to-one with YAML / config.json)."""

    image_size: PositiveInt = 256  # nominal square side; any H, W divisible by the factor encode
    channels: PositiveInt = 128  # CNN base width ``ch`` (hard-coded 128 upstream)
    # one level each; f = 2**(levels - 1)
    encoder_ch_mult: tuple[PositiveInt, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[PositiveInt, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: PositiveInt = 2  # ResnetBlocks per encoder level (the decoder has one more)
    z_channels: PositiveInt = 256  # encoder output / decoder input channels around the quantizer
    dropout: UnitFloat = 0.0
    quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig(
            type="vq", dim=8, codebook_size=16384, l2_normalize=True, beta=0.25
        )
    )  # codes [B, h, w, F]; dim = codebook_embed_dim

    def validate(self) -> VQGANConfig:
        super().validate()
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult) or not self.encoder_ch_mult:
            raise ValueError(
                f"encoder_ch_mult {self.encoder_ch_mult} and decoder_ch_mult "
                f"{self.decoder_ch_mult} must have the same (nonzero) number of levels"
            )
        for name in ("encoder_ch_mult", "decoder_ch_mult"):
            for m in getattr(self, name):
                if m < 1 or (self.channels * m) % 32:
                    raise ValueError(
                        f"{name}: channels*mult must be a positive multiple of 32 (GroupNorm(32)); "
                        f"got channels={self.channels}, mult={m}"
                    )
        f = 2 ** (len(self.encoder_ch_mult) - 1)
        if self.image_size % f:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by the downsampling factor {f}"
            )
        return self


class _Level(nn.Module):
    """One resolution level: ``res`` blocks, optional ``attn`` blocks and a resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()

    def blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def _mid(channels: int, dropout: float, attention: bool) -> nn.ModuleList:
    blocks = [ResnetBlock(channels, channels, dropout)]
    if attention:
        blocks.append(AttnBlock(channels))
    blocks.append(ResnetBlock(channels, channels, dropout))
    return nn.ModuleList(blocks)


class VQGANEncoder(nn.Module):
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, z_channels, H/f, W/f]``."""

    def __init__(self, channels: int, ch_mult: tuple[int, ...], num_res_blocks: int,
                 z_channels: int, dropout: float = 0.0, attention: bool = True) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        c_in = channels
        for i, mult in enumerate(ch_mult):
            level, c_out = _Level(), channels * mult
            for _ in range(num_res_blocks):
                level.res.append(ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
                if attention and i == len(ch_mult) - 1:
                    level.attn.append(AttnBlock(c_in))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(c_in)
            self.conv_blocks.append(level)
        self.mid = _mid(c_in, dropout, attention)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(fast_layout(x))
        for level in self.conv_blocks:
            h = level.blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQGANDecoder(nn.Module):
    """``[B, z_channels, h, w]`` -> ``[B, 3, h*f, w*f]`` in about [-1, 1].

    ``upsample``: ``"nearest"`` (LlamaGen) or ``"d2s"`` (ReTok). ``adaptive_gn``: an
    ``AdaptiveGroupNorm`` conditioned on the decoder input opens every level (ReTok).
    """

    def __init__(self, channels: int, ch_mult: tuple[int, ...], num_res_blocks: int,
                 z_channels: int, dropout: float = 0.0, attention: bool = True,
                 upsample: str = "nearest", adaptive_gn: bool = False) -> None:
        super().__init__()
        if upsample not in ("nearest", "d2s"):
            raise ValueError(f"upsample must be 'nearest' or 'd2s'; got {upsample!r}")
        c_in = channels * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, padding=1)
        self.mid = _mid(c_in, dropout, attention)
        self.conv_blocks = nn.ModuleList()
        self.adaptive = nn.ModuleList() if adaptive_gn else None
        for i in reversed(range(len(ch_mult))):
            level, c_out = _Level(), channels * ch_mult[i]
            if adaptive_gn:
                self.adaptive.append(AdaptiveGroupNorm(z_channels, c_in))
            for _ in range(num_res_blocks + 1):
                level.res.append(ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
                if attention and i == len(ch_mult) - 1:
                    level.attn.append(AttnBlock(c_in))
            if i != 0:
                level.upsample = Upsample(c_in) if upsample == "nearest" else D2SUpsample(c_in)
            self.conv_blocks.append(level)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = fast_layout(z)
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for i, level in enumerate(self.conv_blocks):
            if self.adaptive is not None:
                h = self.adaptive[i](h, z)
            h = level.blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()


@register_model_class
class VQGAN(ImageTokenizer):
    """LlamaGen VQGAN (2D codes). See the module docstring; ``VQGAN(VQGANConfig(...))``."""

    config_class = VQGANConfig
    keep_fp32 = ("quantizer", "quant_conv")  # bf16 trunk, fp32 codes (see ``encode_latents``)

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__(config)
        c, d = config, config.quantizer.dim
        self.size_multiple = 2 ** (len(c.encoder_ch_mult) - 1)
        self.encoder = VQGANEncoder(c.channels, tuple(c.encoder_ch_mult), c.num_res_blocks,
                                    c.z_channels, c.dropout)
        self.decoder = VQGANDecoder(c.channels, tuple(c.decoder_ch_mult), c.num_res_blocks,
                                    c.z_channels, c.dropout)
        self.quant_conv = nn.Conv2d(c.z_channels, d, 1)
        self.post_quant_conv = nn.Conv2d(d, c.z_channels, 1)
        self.quantizer = build_quantizer(c.quantizer)

    # ------------------------------------------------------------------ description
    @property
    def downsample_factor(self) -> int:
        return self.size_multiple

    @property
    def token_shape(self) -> tuple[int, ...]:
        g = self.config.image_size // self.size_multiple
        return (g, g)

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images [0, 1] ``[B, 3, H, W]`` -> pre-quantizer latents ``[B, H/f, W/f, D]``."""
        h = self.encoder(images.to(self.encoder.conv_in.weight.dtype) * 2.0 - 1.0)
        q = self.quant_conv  # in fp32 whatever the trunk's dtype: the codes come from these values
        return F.conv2d(h.float(), q.weight.float(), q.bias.float()).permute(0, 2, 3, 1)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, h, w, D]`` -> ``[B, 3, h*f, w*f]`` on the [0, 1] scale, not clamped."""
        d = self.config.quantizer.dim
        if z_q.ndim != 4 or z_q.shape[-1] != d:
            raise ValueError(f"latents must be [B, h, w, {d}] (channels last); got "
                             f"{tuple(z_q.shape)}")
        return (self.pixels(z_q.permute(0, 3, 1, 2)) + 1.0) / 2.0

    def pixels(self, quant: torch.Tensor) -> torch.Tensor:
        """Official ``decode``: quantized ``[B, D, h, w]`` -> pixels ``[B, 3, H, W]`` in [-1, 1]."""
        return self.decoder(self.post_quant_conv(quant))


# ---------------------------------------------------------------------- presets
_PAPER = ("Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation "
          "(arXiv:2406.06525)")


def vqgan_config(base: dict[str, Any], overrides: dict[str, Any]) -> VQGANConfig:
    """Preset ``base`` + ``overrides`` -> ``VQGANConfig`` (``preset_config``, quantizer dim 8)."""
    return preset_config(VQGANConfig, base, overrides, quantizer_dim=8)


def _record(ckpt: str, f: int, notes: str) -> PretrainedRecord:
    return PretrainedRecord(
        hub_id="FoundationVision/LlamaGen", filename=ckpt, format="vqgan",
        input_size=(256, 256), input_range="[0, 1] (any H, W divisible by the factor)",
        num_tokens=(256 // f) ** 2, vocab="16384 (VQ, 8-d, l2)", license="MIT", paper=_PAPER,
        notes=notes,
    )


def _vq(ch_mult: tuple[int, ...]) -> dict[str, Any]:
    return dict(encoder_ch_mult=ch_mult, decoder_ch_mult=ch_mult, channels=128, z_channels=256,
                quantizer=dict(type="vq", dim=8, codebook_size=16384, l2_normalize=True,
                               beta=0.25))


@register_model(pretrained=_record("vq_ds16_c2i.pt", 16, "VQ-16, 71.9M; rFID 2.19 (ImageNet 256)"))
def vqgan_16(**overrides: Any) -> VQGAN:
    """LlamaGen VQ-16: f16, 16x16 codes at 256x256, VQ 16384x8 l2 (71.9M)."""
    return VQGAN(vqgan_config(_vq((1, 1, 2, 2, 4)), overrides))


@register_model(pretrained=_record("vq_ds8_c2i.pt", 8, "VQ-8, 70.2M"))
def vqgan_8(**overrides: Any) -> VQGAN:
    """LlamaGen VQ-8: f8, 32x32 codes at 256x256, VQ 16384x8 l2 (70.2M)."""
    return VQGAN(vqgan_config(_vq((1, 2, 2, 4)), overrides))


@register_model
def vqgan_tiny(**overrides: Any) -> VQGAN:
    """CPU-trainable VQGAN: 64x64 input, f8 (8x8 codes), 32 base channels, VQ 1024x8 l2 (k-means
    init and dead-code restart: tiny codebooks collapse without them)."""
    base = dict(image_size=64, channels=32, encoder_ch_mult=(1, 1, 2, 2),
                decoder_ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32,
                quantizer=dict(type="vq", dim=8, codebook_size=1024, l2_normalize=True,
                               kmeans_init=True, dead_code_threshold=0.1))
    return VQGAN(vqgan_config(base, overrides))
