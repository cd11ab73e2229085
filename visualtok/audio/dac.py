"""DAC, the Descript Audio Codec (Kumar et al. 2023, "High-Fidelity Audio Compression with
Improved RVQGAN", arXiv:2306.06546).

* **encoder**: a 7-tap conv to ``encoder_dim`` (64), then per stride ``s`` in (2, 4, 8, 8) (44 kHz)
  or (2, 4, 5, 8) (16/24 kHz) an encoder block: three residual units at dilations 1, 3, 9 (Snake,
  7-tap dilated conv, Snake, 1-tap conv, plus the input) then Snake and a ``2s``-tap stride-``s``
  conv doubling the width; Snake and a 3-tap conv to the latent (``encoder_dim * 2**4``);
* **decoder**: a 7-tap conv to ``decoder_dim`` (1536), per stride Snake, a ``2s``-tap transposed
  conv halving the width and three residual units; Snake, a 7-tap conv to one channel, tanh;
* every conv is weight-normalised; **Snake** is ``x + sin^2(alpha x) / alpha`` per channel;
* **RVQ** on our quantizer core: each level projects the residual to 8 dims, searches an
  l2-normalised 1024-row codebook (cosine), and decodes the **raw** row through its output
  projection (``raw_codebook_rows``); codebook + 0.25 commitment losses; quantizer dropout drawn
  per sample, every level's projections trained (``all_level_gradients``).
* input is right-padded with zeros to a multiple of the hop (512 at 44.1 kHz, 320 otherwise).

Released weights (MIT): ``weights_44khz_8kbps_0.0.1.pth``, ``weights_24khz_8kbps_0.0.4.pth``,
``weights_16khz_8kbps_0.0.5.pth`` and the 44 kHz 16 kbps model; the converter reads the official
``{'state_dict', 'metadata': {'kwargs'}}`` files: ``convert_checkpoint("dac", path)``. The
quantizer projections are weight-normed 1x1 convs upstream; the converter folds them into
``Linear`` weights (the same numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config, PositiveInt, Radix, UnitFloat
from ..quantize.config import QuantizerConfig
from ..registry import PretrainedRecord, register_model, register_model_class
from .base import ConvRVQCodec, dac_rvq_config
from .layers import Snake, Stack, WNConv1d, WNConvTranspose1d

__all__ = ["DACConfig", "DAC"]


@dataclass
class DACConfig(Config):
    encoder_dim: PositiveInt = 64
    encoder_rates: tuple[PositiveInt, ...] = (2, 4, 8, 8)
    latent_dim: PositiveInt | None = None  # None = encoder_dim * 2 ** len(encoder_rates)
    decoder_dim: PositiveInt = 1536
    decoder_rates: tuple[PositiveInt, ...] = (8, 8, 4, 2)
    n_codebooks: PositiveInt = 9
    codebook_size: Radix = 1024
    codebook_dim: PositiveInt = 8
    # training: share of each batch on a random prefix (DAC: 0.5)
    quantizer_dropout: UnitFloat = 0.0
    sample_rate: PositiveInt = 44100

    def validate(self) -> DACConfig:
        super().validate()
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ValueError(f"DACConfig: encoder_rates {self.encoder_rates} and decoder_rates "
                             f"{self.decoder_rates} must have the same product (the hop)")
        if self.latent_dim is None:
            self.latent_dim = self.encoder_dim * 2 ** len(self.encoder_rates)
        return self

    @property
    def hop_length(self) -> int:
        return math.prod(self.encoder_rates)

    def quantizer_config(self) -> QuantizerConfig:
        return dac_rvq_config(self)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake(dim), WNConv1d(dim, dim, 7, dilation=dilation, padding=3 * dilation),
            Snake(dim), WNConv1d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return y.add_(x)  # y is the block's fresh output: no new tensor, the same sum


class EncoderBlock(Stack):
    stack_attr = "block"

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, 1), ResidualUnit(dim // 2, 3), ResidualUnit(dim // 2, 9),
            Snake(dim // 2),
            WNConv1d(dim // 2, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )


class Encoder(Stack):
    stack_attr = "block"

    def __init__(self, cfg: DACConfig) -> None:
        super().__init__()
        d = cfg.encoder_dim
        layers: list[nn.Module] = [WNConv1d(1, d, 7, padding=3)]
        for stride in cfg.encoder_rates:
            d *= 2
            layers.append(EncoderBlock(d, stride))
        layers += [Snake(d), WNConv1d(d, cfg.latent_dim, 3, padding=1)]
        self.block = nn.Sequential(*layers)


class DecoderBlock(Stack):
    stack_attr = "block"

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake(c_in),
            WNConvTranspose1d(c_in, c_out, 2 * stride, stride, padding=math.ceil(stride / 2)),
            ResidualUnit(c_out, 1), ResidualUnit(c_out, 3), ResidualUnit(c_out, 9),
        )


class Decoder(Stack):
    stack_attr = "model"

    def __init__(self, cfg: DACConfig) -> None:
        super().__init__()
        ch = cfg.decoder_dim
        layers: list[nn.Module] = [WNConv1d(cfg.latent_dim, ch, 7, padding=3)]
        for i, stride in enumerate(cfg.decoder_rates):
            layers.append(DecoderBlock(ch // 2**i, ch // 2 ** (i + 1), stride))
        out = ch // 2 ** len(cfg.decoder_rates)
        layers += [Snake(out), WNConv1d(out, 1, 7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)


def _init_weights(m: nn.Module) -> None:
    """DAC zeroes every conv bias. (Its trunc-normal kernel init writes to the weight-norm's
    derived ``weight`` and so never reaches ``g``/``v``: kernels keep PyTorch's default init.)"""
    if isinstance(m, WNConv1d) and m.bias is not None:
        with torch.no_grad():
            m.bias.zero_()


@register_model_class
class DAC(ConvRVQCodec):
    """Descript Audio Codec (mono). See the module docstring; ``DAC(DACConfig(...))``."""

    config_class = DACConfig
    encoder_class, decoder_class = Encoder, Decoder
    init_weights = staticmethod(_init_weights)


# ---------------------------------------------------------------------- presets
_PAPER = "High-Fidelity Audio Compression with Improved RVQGAN (arXiv:2306.06546)"

DAC_PRESETS: dict[str, dict[str, Any]] = {
    "dac_44khz": dict(),  # the class defaults: 44.1 kHz, hop 512, 9 codebooks (8 kbps)
    "dac_24khz": dict(encoder_rates=(2, 4, 5, 8), decoder_rates=(8, 5, 4, 2), n_codebooks=32,
                      sample_rate=24000),
    "dac_16khz": dict(encoder_rates=(2, 4, 5, 8), decoder_rates=(8, 5, 4, 2), n_codebooks=12,
                      sample_rate=16000),
    "dac_44khz_16kbps": dict(latent_dim=128, n_codebooks=18),
}


def _record(name: str, filename: str, kbps: str) -> PretrainedRecord:
    cfg = DACConfig(**DAC_PRESETS[name]).validate()
    return PretrainedRecord(
        hub_id=None, filename=filename, format="dac", input_range="[-1, 1] waveform, mono",
        vocab=f"{cfg.n_codebooks} x {cfg.codebook_size} (RVQ, 8-d factorised, l2 search)",
        license="MIT", paper=_PAPER, sample_rate=cfg.sample_rate, hop_length=cfg.hop_length,
        num_codebooks=cfg.n_codebooks, channels=1,
        notes=f"official descript-audio-codec weights ({filename}), {kbps}; put the file in "
              "weights/<preset>/ to load it offline",
    )


def _preset(name: str, overrides: dict[str, Any]) -> DAC:
    from ..config import config_from_dict

    return DAC(config_from_dict(DACConfig, {**DAC_PRESETS[name], **overrides}))


@register_model(task="audio-codec",
                pretrained=_record("dac_44khz", "weights_44khz_8kbps_0.0.1.pth", "7.75 kbps"))
def dac_44khz(**overrides: Any) -> DAC:
    return _preset("dac_44khz", overrides)


@register_model(task="audio-codec",
                pretrained=_record("dac_24khz", "weights_24khz_8kbps_0.0.4.pth", "24 kbps"))
def dac_24khz(**overrides: Any) -> DAC:
    return _preset("dac_24khz", overrides)


@register_model(task="audio-codec",
                pretrained=_record("dac_16khz", "weights_16khz_8kbps_0.0.5.pth", "6 kbps"))
def dac_16khz(**overrides: Any) -> DAC:
    return _preset("dac_16khz", overrides)


@register_model(task="audio-codec",
                pretrained=_record("dac_44khz_16kbps", "weights_44khz_16kbps_0.0.1.pth",
                                   "15.5 kbps"))
def dac_44khz_16kbps(**overrides: Any) -> DAC:
    return _preset("dac_44khz_16kbps", overrides)
