"""Training task ``codec``: visualtok's audio codec (``visualtok.audio.codec``), GAN-trained (DAC).

Optimizer ``"model"`` minimises ``mel_weight * multi-scale mel L1 + quantizer_weight * (codebook +
0.25 commitment) + adv_weight * LSGAN generator loss + fm_weight * feature matching``; optimizer
``"discriminator"`` (when ``adv_weight > 0``) minimises the LSGAN loss of a multi-period
discriminator (periods 2, 3, 5, 7, 11 over the reshaped waveform) and a multi-resolution
complex-STFT discriminator. The mel loss compares log10 mel spectrograms at window sizes 32..2048
(DAC: 7 scales, ``n_mels`` 5..320). Per-level code usage and perplexity come from the RVQ core
(``quantizer/usage_<level>``, ``quantizer/perplexity_<level>``); media: a log-mel picture (input
above reconstruction) and both waveforms as TensorBoard audio.

Data: ``data.type: audio`` (``AudioFolderDataset``: mono crops of ``data.num_samples``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.io import mel_spectrogram
from ..registry import register_task
from .task import StepOutput, Task

__all__ = ["CodecLossConfig", "CodecTask", "DiscriminatorBank",
           "multiscale_mel_loss"]


@dataclass
class CodecLossConfig:
    mel_weight: float = 15.0
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    quantizer_weight: float = 1.0  # codebook loss + beta * commitment (beta in the RVQ config)
    adv_weight: float = 1.0  # 0 = no discriminators
    fm_weight: float = 2.0
    gan_start_step: int = 0
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    stft_windows: tuple[int, ...] = (2048, 1024, 512)
    disc_channels: int = 32

    def __post_init__(self) -> None:
        if len(self.mel_windows) != len(self.mel_bins) or not self.mel_windows:
            raise ValueError(f"loss.mel_windows {self.mel_windows} and loss.mel_bins "
                             f"{self.mel_bins} must be non-empty lists of the same length")
        for name in ("mel_weight", "quantizer_weight", "adv_weight", "fm_weight"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"loss.{name} must be >= 0; got {getattr(self, name)!r}")


def multiscale_mel_loss(x: torch.Tensor, y: torch.Tensor, sample_rate: int,
                        windows: tuple[int, ...], bins: tuple[int, ...]) -> torch.Tensor:
    """Mean over scales of L1 between log10 mel spectrograms (hop = window / 4)."""
    total = x.new_zeros(())
    for n_fft, n_mels in zip(windows, bins):
        mx = mel_spectrogram(x.float(), sample_rate, n_fft, n_fft // 4, n_mels)
        my = mel_spectrogram(y.float(), sample_rate, n_fft, n_fft // 4, n_mels)
        total = total + (mx.clamp_min(1e-5).log10() - my.clamp_min(1e-5).log10()).abs().mean()
    return total / len(windows)


def _wn(m: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(m)


def _stack_features(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output of a discriminator's conv stack (leaky ReLU 0.1), then ``post``'s:
    the features that feature matching compares."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        feats.append(x)
    feats.append(post(x))
    return feats


class _PeriodDisc(nn.Module):
    def __init__(self, period: int, ch: int) -> None:
        super().__init__()
        self.period = period
        widths = [1, ch, 4 * ch, 16 * ch, 32 * ch]
        self.convs = nn.ModuleList(
            _wn(nn.Conv2d(a, b, (5, 1), (3, 1), padding=(2, 0))) for a, b in zip(widths, widths[1:])
        )
        self.post = _wn(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = x.shape[-1]
        x = F.pad(x, (0, -t % self.period), mode="reflect")
        x = x.reshape(x.shape[0], 1, -1, self.period)
        return _stack_features(self.convs, self.post, x)


class DiscriminatorBank(nn.Module):
    """Sub-discriminators of one kind on the same waveform: HiFi-GAN's multi-period bank (the
    waveform folded to ``[T / p, p]`` per period, 2D convs) or the multi-resolution complex-STFT
    bank (real and imaginary parts as 2 channels per window). One feature stack per member."""

    def __init__(self, discs: Iterable[nn.Module]) -> None:
        super().__init__()
        self.discs = nn.ModuleList(discs)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [d(x) for d in self.discs]


class _STFTDisc(nn.Module):
    def __init__(self, n_fft: int, ch: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([_wn(nn.Conv2d(2, ch, (3, 9), padding=(1, 4)))] + [
            _wn(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(d, 4), dilation=(d, 1)))
            for d in (1, 2, 4)
        ])
        self.post = _wn(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s = torch.stft(x.float().squeeze(1), self.n_fft, self.n_fft // 4, window=self.window,
                       return_complex=True)  # [B, F, frames]
        x = torch.view_as_real(s).permute(0, 3, 2, 1)  # [B, 2, frames, F]
        return _stack_features(self.convs, self.post, x)


class CodecDiscriminator(nn.Module):
    def __init__(self, c: CodecLossConfig) -> None:
        super().__init__()
        self.mpd = DiscriminatorBank(_PeriodDisc(p, c.disc_channels) for p in c.periods)
        self.mrstft = DiscriminatorBank(_STFTDisc(n, c.disc_channels) for n in c.stft_windows)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return self.mpd(x) + self.mrstft(x)


@register_task("codec")
class CodecTask(Task):
    loss_config_class = CodecLossConfig

    def __init__(self, model: nn.Module, loss_config: CodecLossConfig, train_config: Any) -> None:
        super().__init__(model, loss_config, train_config)
        from ..audio.codec import Codec

        if not isinstance(model, Codec):
            raise TypeError(f"task 'codec' trains a visualtok Codec (codec_tiny / codec_small / "
                            f"codec_lm); got {type(model).__name__}")
        if train_config.data.type != "audio":
            raise ValueError(f"task 'codec' needs data.type: audio; got {train_config.data.type!r}")
        if train_config.data.sample_rate != model.sample_rate:
            raise ValueError(f"data.sample_rate ({train_config.data.sample_rate}) must equal the "
                             f"model's {model.sample_rate} Hz")
        if loss_config.adv_weight > 0:
            self.modules["discriminator"] = CodecDiscriminator(loss_config)
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def compute_loss(self, name: str, batch: Any, step: int) -> StepOutput:
        wav = batch["audio"]  # [B, 1, T]
        return self._model_loss(wav, step) if name == "model" else self._disc_loss()

    def _gan_on(self, step: int) -> bool:
        return self.loss_config.adv_weight > 0 and step >= self.loss_config.gan_start_step

    def _model_loss(self, wav: torch.Tensor, step: int) -> StepOutput:
        c = self.loss_config
        recon, quant = self.modules["model"](wav)
        mel = multiscale_mel_loss(recon, wav, self.model.sample_rate, tuple(c.mel_windows),
                                  tuple(c.mel_bins))
        loss = c.mel_weight * mel + c.quantizer_weight * quant.losses["total"]
        logs: dict[str, Any] = {"loss/mel": mel.detach(),
                                "loss/commitment": quant.losses["commitment"].detach(),
                                "loss/codebook": quant.losses["codebook"].detach()}
        if self._gan_on(step):
            disc = self.modules["discriminator"]
            fake = disc(recon)
            with torch.no_grad():
                real = disc(wav)
            adv = sum(((1 - f[-1]) ** 2).mean() for f in fake) / len(fake)
            fm = sum(F.l1_loss(a, b.detach()) for fr, rr in zip(fake, real)
                     for a, b in zip(fr[:-1], rr[:-1])) / len(fake)
            loss = loss + c.adv_weight * adv + c.fm_weight * fm
            logs.update({"loss/adv_g": adv.detach(), "loss/feature_matching": fm.detach()})
        self._pair = (wav, recon.detach())
        for k, v in quant.stats.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                logs[f"quantizer/{k}"] = v.detach()
        logs["loss/total"] = loss.detach()
        return StepOutput(loss, logs)

    def _disc_loss(self) -> StepOutput:
        wav, recon = self._pair
        outs = self.modules["discriminator"](torch.cat([wav, recon]))
        loss = wav.new_zeros(())
        for f in outs:
            real, fake = f[-1].chunk(2)
            loss = loss + ((1 - real) ** 2).mean() + (fake**2).mean()
        loss = loss / len(outs)
        return StepOutput(loss, {"loss/disc": loss.detach()})

    def is_active(self, name: str, step: int) -> bool:
        if name == "discriminator":
            return self._gan_on(step) and self._pair is not None
        return True

    @torch.no_grad()
    def log_media(self, batch: Any) -> dict[str, torch.Tensor]:
        wav = batch["audio"][:2]
        recon = self.model.reconstruct(wav, self.model.sample_rate)
        mels = [mel_spectrogram(w[:, 0], self.model.sample_rate, 1024, 256, 80)
                .clamp_min(1e-5).log10() for w in (wav, recon)]
        pic = torch.cat(mels, dim=-2).flip(-2)  # [B, 160, frames], low frequencies at the bottom
        pic = (pic - pic.amin(dim=(-2, -1), keepdim=True)) / (
            pic.amax(dim=(-2, -1), keepdim=True) - pic.amin(dim=(-2, -1), keepdim=True) + 1e-8)
        return {"spectrogram": pic[:, None].expand(-1, 3, -1, -1),
                "audio/input": wav[:, 0], "audio/reconstruction": recon[:, 0]}
