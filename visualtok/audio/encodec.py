"""EnCodec (Défossez et al. 2022, "High Fidelity Neural Audio Compression", arXiv:2210.13438).

A SEANet convolutional encoder/decoder around a residual vector quantizer:

* **encoder**: a 7-tap conv to ``n_filters`` (32), then per stride ``r`` in (2, 4, 5, 8) one
  residual block (ELU, 3-tap conv to half width, ELU, 1-tap conv, plus a 1-tap conv shortcut),
  ELU and a ``2r``-tap stride-``r`` conv doubling the width; a 2-layer LSTM with a skip; ELU and a
  7-tap conv to the 128-d latent. Hop 320: 75 frames/s at 24 kHz, 150 at 48 kHz;
* **decoder**: the mirror image with transposed convs;
* every conv pads to keep ``ceil(T / stride)`` frames: causal (all padding on the left, 24 kHz) or
  centred (48 kHz), reflect mode, plus the right padding that fills the last window;
* **normalisation**: weight norm (24 kHz) or a one-group GroupNorm after each conv
  ("time_group_norm", 48 kHz);
* **RVQ** on our quantizer core: 1024 codes per level, EMA codebooks (decay 0.99), k-means init
  (50 iterations) and dead-code replacement (EMA count < 2), commitment weight 1. Bandwidth
  ``b`` kbps uses ``floor(b / (10 bits x frame rate))`` levels: 1.5-24 kbps = 2-32 levels at
  24 kHz, 3-24 kbps = 2-16 at 48 kHz;
* **48 kHz**: stereo, input scaled by the RMS of its mono mix per 1 s chunk (the scale travels in
  ``AudioCodes.scales``); chunks overlap by 1 % and are cross-faded by a linear overlap-add.

Official checkpoints: ``encodec_24khz-d7cc33bc.th`` and ``encodec_48khz-7e698e3e.th`` (MIT, PyPI
``encodec``); ``visualtok.convert.convert_checkpoint("encodec", path, config="encodec_24khz")``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import Config, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Radix
from ..quantize.config import QuantizerConfig, build_quantizer
from ..registry import PretrainedRecord, register_model, register_model_class
from .base import AudioCodec
from .layers import Stack, WNConv1d, WNConvTranspose1d, extra_padding_for_conv1d, pad1d

__all__ = ["EncodecConfig", "Encodec", "SEANetEncoder", "SEANetDecoder", "linear_overlap_add"]


@dataclass
class EncodecConfig(Config):
    sample_rate: PositiveInt = 24000
    channels: PositiveInt = 1  # audio channels (48 kHz: 2)
    causal: bool = True  # 24 kHz causal, 48 kHz not
    norm: Literal["weight_norm", "time_group_norm"] = "weight_norm"
    # SEANet widths and strides
    n_filters: PositiveInt = 32  # base width, doubled at each downsampling
    ratios: tuple[PositiveInt, ...] = (8, 5, 4, 2)  # decoder upsampling strides (encoder: reversed)
    dimension: PositiveInt = 128  # latent channels D
    n_residual_layers: PositiveInt = 1
    compress: PositiveInt = 2  # residual branch width = width // compress
    lstm_layers: NonNegativeInt = 2
    # kernels
    kernel_size: PositiveInt = 7
    last_kernel_size: PositiveInt = 7
    residual_kernel_size: PositiveInt = 3
    dilation_base: PositiveInt = 2
    pad_mode: Literal["reflect", "constant", "replicate", "circular"] = "reflect"  # F.pad modes
    # causal transposed convs trim this share of padding on the right
    trim_right_ratio: NonNegativeFloat = 1.0
    target_bandwidths: tuple[PositiveFloat, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)  # kbps
    codebook_size: Radix = 1024
    normalize: bool = False  # scale input by its RMS (per chunk), 48 kHz
    segment: float | None = None  # chunk length in seconds (48 kHz: 1.0); None = whole signal
    overlap: float = 0.01  # chunk overlap, fraction of the chunk
    quantizer: QuantizerConfig | None = None  # None = EnCodec's RVQ for these dims

    def validate(self) -> EncodecConfig:
        super().validate()
        if self.norm == "time_group_norm" and self.causal:
            raise ValueError("EncodecConfig: time_group_norm is not causal; set causal=False")
        if self.channels < 1 or self.n_filters < 1 or self.dimension < 1:
            raise ValueError("EncodecConfig: channels, n_filters and dimension must be >= 1")
        if not self.ratios or any(r < 1 for r in self.ratios):
            raise ValueError(f"EncodecConfig.ratios must be positive ints; got {self.ratios}")
        if self.segment is not None and self.segment <= 0:
            raise ValueError(f"EncodecConfig.segment must be > 0 seconds or None; got "
                             f"{self.segment}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"EncodecConfig.overlap must be in [0, 1); got {self.overlap}")
        if self.quantizer is None:
            self.quantizer = QuantizerConfig(
                type="rvq", dim=self.dimension, codebook_size=self.codebook_size,
                num_quantizers=self.num_quantizers_for(max(self.target_bandwidths)),
                beta=1.0, ema=True, ema_decay=0.99, kmeans_init=True, kmeans_iters=50,
                dead_code_threshold=2.0,
            )
        q = self.quantizer.validate()
        if q.type != "rvq" or q.dim != self.dimension or q.codebook_size != self.codebook_size:
            raise ValueError("EncodecConfig.quantizer must be an rvq with dim == dimension and "
                             "codebook_size == codebook_size")
        return self

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    def num_quantizers_for(self, bandwidth: float) -> int:
        """Levels that fit in ``bandwidth`` kbps (at least one)."""
        per_level = math.log2(self.codebook_size) * self.frame_rate / 1000
        return int(max(1, math.floor(bandwidth / per_level)))


# ---------------------------------------------------------------------- building blocks
class SConv1d(nn.Module):
    """Conv1d that keeps ``ceil(T / stride)`` frames: causal or centred reflect padding plus the
    right padding that fills the last window; weight norm or a one-group GroupNorm after it."""

    def __init__(self, cfg: EncodecConfig, c_in: int, c_out: int, kernel_size: int,
                 stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = WNConv1d(c_in, c_out, kernel_size, stride, dilation,
                             weight_norm=cfg.norm == "weight_norm")
        self.norm = nn.GroupNorm(1, c_out) if cfg.norm == "time_group_norm" else nn.Identity()
        self.causal, self.pad_mode = cfg.causal, cfg.pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, d = self.conv.kernel_size, self.conv.stride, self.conv.dilation
        total = (k - 1) * d - (s - 1)
        extra = extra_padding_for_conv1d(x.shape[-1], k, s, total)
        left = total if self.causal else total - total // 2
        return self.norm(self.conv(pad1d(x, left, total - left + extra, self.pad_mode)))


class SConvTranspose1d(nn.Module):
    """Transposed conv that trims its fixed padding (right share ``trim_right_ratio`` if causal,
    centred otherwise); the fill padding of the encoder is trimmed at the very end."""

    def __init__(self, cfg: EncodecConfig, c_in: int, c_out: int, kernel_size: int,
                 stride: int) -> None:
        super().__init__()
        self.convtr = WNConvTranspose1d(c_in, c_out, kernel_size, stride,
                                        weight_norm=cfg.norm == "weight_norm")
        self.norm = nn.GroupNorm(1, c_out) if cfg.norm == "time_group_norm" else nn.Identity()
        self.causal, self.trim_right_ratio = cfg.causal, cfg.trim_right_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.convtr(x))
        total = self.convtr.kernel_size - self.convtr.stride
        right = math.ceil(total * self.trim_right_ratio) if self.causal else total // 2
        return y[..., total - right : y.shape[-1] - right]


class SLSTM(nn.Module):
    """LSTM over time on ``[B, C, T]`` with a skip connection."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)  # [T, B, C]
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)


class ResidualBlock(nn.Module):
    """ELU, k-tap dilated conv to ``dim // compress``, ELU, 1-tap conv back; 1-tap conv shortcut."""

    def __init__(self, cfg: EncodecConfig, dim: int, dilation: int) -> None:
        super().__init__()
        hidden = dim // cfg.compress
        self.block = nn.Sequential(
            nn.ELU(), SConv1d(cfg, dim, hidden, cfg.residual_kernel_size, dilation=dilation),
            nn.ELU(), SConv1d(cfg, hidden, dim, 1),
        )
        self.shortcut = SConv1d(cfg, dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x).add_(self.block(x))


class SEANetEncoder(Stack):
    """``[B, C, T]`` -> ``[B, D, ceil(T / hop)]``."""

    def __init__(self, cfg: EncodecConfig) -> None:
        super().__init__()
        width = cfg.n_filters
        layers: list[nn.Module] = [SConv1d(cfg, cfg.channels, width, cfg.kernel_size)]
        for ratio in reversed(cfg.ratios):
            layers += [ResidualBlock(cfg, width, cfg.dilation_base**j)
                       for j in range(cfg.n_residual_layers)]
            layers += [nn.ELU(), SConv1d(cfg, width, 2 * width, 2 * ratio, stride=ratio)]
            width *= 2
        if cfg.lstm_layers:
            layers.append(SLSTM(width, cfg.lstm_layers))
        layers += [nn.ELU(), SConv1d(cfg, width, cfg.dimension, cfg.last_kernel_size)]
        self.layers = nn.Sequential(*layers)


class SEANetDecoder(Stack):
    """``[B, D, T_f]`` -> ``[B, C, T_f * hop]``."""

    def __init__(self, cfg: EncodecConfig) -> None:
        super().__init__()
        width = cfg.n_filters * 2 ** len(cfg.ratios)
        layers: list[nn.Module] = [SConv1d(cfg, cfg.dimension, width, cfg.kernel_size)]
        if cfg.lstm_layers:
            layers.append(SLSTM(width, cfg.lstm_layers))
        for ratio in cfg.ratios:
            layers += [nn.ELU(), SConvTranspose1d(cfg, width, width // 2, 2 * ratio, ratio)]
            layers += [ResidualBlock(cfg, width // 2, cfg.dilation_base**j)
                       for j in range(cfg.n_residual_layers)]
            width //= 2
        layers += [nn.ELU(), SConv1d(cfg, cfg.n_filters, cfg.channels, cfg.last_kernel_size)]
        self.layers = nn.Sequential(*layers)


def linear_overlap_add(frames: list[torch.Tensor], stride: int) -> torch.Tensor:
    """Cross-fade chunks ``[..., T_i]`` placed ``stride`` apart with triangular weights (peak at
    each chunk's centre), normalised by the summed weights; a lone chunk passes unchanged."""
    ref = frames[0]
    chunk = ref.shape[-1]
    total = stride * (len(frames) - 1) + frames[-1].shape[-1]
    t = torch.linspace(0, 1, chunk + 2, device=ref.device, dtype=ref.dtype)[1:-1]
    weight = 0.5 - (t - 0.5).abs()
    out = torch.zeros(*ref.shape[:-1], total, device=ref.device, dtype=ref.dtype)
    norm = torch.zeros(total, device=ref.device, dtype=ref.dtype)
    for i, f in enumerate(frames):
        n, o = f.shape[-1], i * stride
        out[..., o : o + n] += weight[:n] * f
        norm[o : o + n] += weight[:n]
    return out / norm


# ---------------------------------------------------------------------- the codec
@register_model_class
class Encodec(AudioCodec):
    """EnCodec 24/48 kHz. See the module docstring; ``Encodec(EncodecConfig(...))``."""

    config_class = EncodecConfig

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.encoder = SEANetEncoder(config)
        self.quantizer = build_quantizer(config.quantizer)
        self.decoder = SEANetDecoder(config)

    # ------------------------------------------------------------------ description
    @property
    def frame_rate(self) -> float:
        return float(self.config.frame_rate)

    def n_q_for_bandwidth(self, bandwidth: float) -> int:
        """Levels of target bandwidth ``bandwidth`` kbps (one of ``config.target_bandwidths``)."""
        if bandwidth not in self.config.target_bandwidths:
            raise ValueError(f"bandwidth must be one of {list(self.config.target_bandwidths)} "
                             f"kbps for this model; got {bandwidth!r}")
        return min(self.config.num_quantizers_for(bandwidth), self.max_codebooks)

    @property
    def segment_length(self) -> int | None:
        seg = self.config.segment
        return None if seg is None else int(seg * self.sample_rate)

    @property
    def segment_stride(self) -> int | None:
        n = self.segment_length
        return None if n is None else max(1, int((1 - self.config.overlap) * n))

    def _chunks(self, num_samples: int) -> list[tuple[int, int]]:
        """(offset, length) of each chunk of a ``num_samples`` signal."""
        seg, stride = self.segment_length, self.segment_stride
        if seg is None:
            return [(0, num_samples)]
        return [(o, min(seg, num_samples - o)) for o in range(0, num_samples, stride)]

    def num_frames(self, num_samples: int) -> int:
        return sum(math.ceil(n / self.hop_length) for _, n in self._chunks(num_samples))

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk ``[B, C, T]`` -> (latents ``[B, T_f, D]`` channels last, scale ``[B, 1]``)."""
        scale = None
        if self.config.normalize:
            volume = wav.mean(dim=1, keepdim=True).pow(2).mean(dim=2, keepdim=True).sqrt()
            scale = 1e-8 + volume
            wav = wav / scale
            scale = scale.view(-1, 1)
        return self.encoder(wav).transpose(1, 2), scale

    def decode_latents(self, z_q: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Quantized latents ``[B, T_f, D]`` (+ chunk scale ``[B, 1]``) -> ``[B, C, T_f * hop]``."""
        y = self.decoder(z_q.transpose(1, 2))
        return y * scale.view(-1, 1, 1) if scale is not None else y

    def forward(self, wav: torch.Tensor):
        """Training step on one chunk ``[B, C, T]``: (reconstruction ``[B, C, T]``, QuantOutput)."""
        z, scale = self.encode_latents(wav)
        quant = self.quantizer(z)
        return self.decode_latents(quant.z_q, scale)[..., : wav.shape[-1]], quant

    # ------------------------------------------------------------------ codec hooks
    def _encode(self, wav: torch.Tensor, n_q: int):
        codes, scales = [], []
        for offset, n in self._chunks(wav.shape[-1]):
            z, scale = self.encode_latents(wav[..., offset : offset + n])
            codes.append(self.quantizer.encode(z, depth=n_q))
            if scale is not None:
                scales.append(scale)
        return torch.cat(codes, dim=1), (torch.cat(scales, dim=1) if scales else None)

    def _decode(self, codes: torch.Tensor, scales: torch.Tensor | None, num_samples: int | None):
        if num_samples is not None:
            chunks = self._chunks(num_samples)
            sizes = [math.ceil(n / self.hop_length) for _, n in chunks]
            if sum(sizes) != codes.shape[1]:
                raise ValueError(f"codes have {codes.shape[1]} frames; {num_samples} samples "
                                 f"need {sum(sizes)}")
        else:  # bare codes: full chunks, the last one whatever is left
            seg = self.segment_length
            per = math.ceil(seg / self.hop_length) if seg is not None else codes.shape[1]
            sizes = [min(per, codes.shape[1] - s) for s in range(0, codes.shape[1], per)]
        if scales is not None and scales.shape[1] < len(sizes):
            raise ValueError(f"AudioCodes.scales has {scales.shape[1]} chunks; the codes hold "
                             f"{len(sizes)}")
        frames, start = [], 0
        for i, size in enumerate(sizes):
            z_q = self.quantizer.decode(codes[:, start : start + size])
            scale = scales[:, i : i + 1] if scales is not None else None
            frames.append(self.decode_latents(z_q.to(self._param_dtype()), scale))
            start += size
        y = frames[0] if len(frames) == 1 else linear_overlap_add(frames, self.segment_stride)
        return y[..., :num_samples] if num_samples is not None else y


# ---------------------------------------------------------------------- presets
_PAPER = "High Fidelity Neural Audio Compression (arXiv:2210.13438)"


def _record(sr: int, ch: int, q: int, filename: str, bws: str) -> PretrainedRecord:
    return PretrainedRecord(
        hub_id=None, filename=filename, format="encodec", input_size=None,
        input_range="[-1, 1] waveform", vocab=f"{q} x 1024 (RVQ, 128-d, EMA)", license="MIT",
        paper=_PAPER, sample_rate=sr, hop_length=320, num_codebooks=q, channels=ch,
        notes=f"official weights from the encodec package ({filename}); bandwidths {bws} kbps; "
              "put the file in weights/<preset>/ to load it offline",
    )


def _preset(base: dict[str, Any], overrides: dict[str, Any]) -> Encodec:
    from ..config import config_from_dict

    return Encodec(config_from_dict(EncodecConfig, {**base, **overrides}))


ENCODEC_24KHZ: dict[str, Any] = dict(sample_rate=24000, channels=1, causal=True,
                                     norm="weight_norm", target_bandwidths=(1.5, 3.0, 6.0, 12.0,
                                                                            24.0))
ENCODEC_48KHZ: dict[str, Any] = dict(sample_rate=48000, channels=2, causal=False,
                                     norm="time_group_norm", target_bandwidths=(3.0, 6.0, 12.0,
                                                                                24.0),
                                     normalize=True, segment=1.0, overlap=0.01)


@register_model(task="audio-codec",
                pretrained=_record(24000, 1, 32, "encodec_24khz-d7cc33bc.th", "1.5/3/6/12/24"))
def encodec_24khz(**overrides: Any) -> Encodec:
    return _preset(ENCODEC_24KHZ, overrides)


@register_model(task="audio-codec",
                pretrained=_record(48000, 2, 16, "encodec_48khz-7e698e3e.th", "3/6/12/24"))
def encodec_48khz(**overrides: Any) -> Encodec:
    return _preset(ENCODEC_48KHZ, overrides)

