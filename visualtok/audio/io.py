"""Audio file I/O (``soundfile``) and DSP (``torchaudio``): read, write, resample, mel and STFT.

``soundfile`` reads wav, flac and ogg (and mp3 where its libsndfile build has it); torchaudio's own
``load``/``save`` need torchcodec plus a system FFmpeg, so they are not used. Waveforms are float32
``[C, T]`` in [-1, 1]; ``read_audio`` can mix to mono, duplicate mono to more channels, and
resample.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = [
    "AUDIO_EXTENSIONS",
    "read_audio",
    "write_audio",
    "resample",
    "to_channels",
    "mel_spectrogram",
    "stft_magnitude",
    "save_spectrograms",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def to_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """``[..., C, T]`` -> ``[..., channels, T]``: mean-mix to mono, or repeat a mono signal.

    Any other channel change (e.g. 6 -> 2) is ambiguous and raises.
    """
    c = wav.shape[-2]
    if c == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if c == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1]).contiguous()
    raise ValueError(
        f"cannot convert {c}-channel audio to {channels} channels: only mono <-> N is defined"
    )


def resample(wav: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited (sinc) resampling along the last dim, through ``torchaudio.functional``."""
    for name, r in (("orig_rate", orig_rate), ("new_rate", new_rate)):
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"{name} must be a positive int (Hz); got {r!r}")
    if orig_rate == new_rate:
        return wav
    import torchaudio.functional as AF

    return AF.resample(wav, orig_rate, new_rate)


def read_audio(
    path: str | Path, sample_rate: int | None = None, channels: int | None = None
) -> tuple[torch.Tensor, int]:
    """Read ``path`` -> (``[C, T]`` float32 in [-1, 1], sample rate).

    ``sample_rate`` resamples to that rate (clamped to [-1, 1]); ``channels`` converts with
    ``to_channels``. Empty or unreadable files raise ``ValueError`` naming the file.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError types
        raise ValueError(
            f"{path} is not a readable audio file (wav/flac/ogg/mp3 via soundfile): {e}"
        ) from None
    if data.shape[0] == 0:
        raise ValueError(f"{path} holds no audio samples (empty file)")
    wav = torch.from_numpy(data.T.copy())
    if channels is not None:
        wav = to_channels(wav, channels)
    if sample_rate is not None and sample_rate != sr:
        # sinc resampling can overshoot full scale by a little: clamp back to [-1, 1]
        wav, sr = resample(wav, int(sr), sample_rate).clamp_(-1.0, 1.0), sample_rate
    return wav, int(sr)


def write_audio(path: str | Path, wav: torch.Tensor, sample_rate: int) -> Path:
    """Write ``[C, T]`` (or ``[T]``) float audio as 16-bit PCM (wav/flac) or Vorbis (ogg).

    Values are clamped to [-1, 1]. The format follows the suffix.
    """
    import soundfile as sf

    path = Path(path)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ValueError(f"audio to write must be [C, T]; got shape {tuple(wav.shape)}")
    fmt = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
    if path.suffix.lower() not in fmt:
        raise ValueError(f"cannot write {path.suffix!r} audio; use one of {sorted(fmt)}")
    kind, subtype = fmt[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = wav.detach().float().clamp(-1.0, 1.0).cpu().numpy().T
    sf.write(str(path), data, sample_rate, format=kind, subtype=subtype)
    return path


def stft_magnitude(
    wav: torch.Tensor, n_fft: int = 1024, hop_length: int | None = None, power: float = 1.0
) -> torch.Tensor:
    """``[..., T]`` -> ``[..., n_fft // 2 + 1, frames]`` Hann-window STFT magnitude ** power."""
    hop = hop_length or n_fft // 4
    lead = wav.shape[:-1]
    x = wav.reshape(-1, wav.shape[-1]).float()
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, device=x.device),
                      center=True, return_complex=True).abs()
    if power != 1.0:
        spec = spec.pow(power)
    return spec.reshape(*lead, *spec.shape[-2:])


def mel_spectrogram(
    wav: torch.Tensor, sample_rate: int, n_fft: int = 1024, hop_length: int | None = None,
    n_mels: int = 80, power: float = 1.0,
) -> torch.Tensor:
    """``[..., T]`` -> ``[..., n_mels, frames]`` mel spectrogram (torchaudio filterbank, Slaney)."""
    import torchaudio.functional as AF

    spec = stft_magnitude(wav, n_fft, hop_length, power)
    fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate,
                            norm="slaney", mel_scale="slaney").to(spec.device)
    return torch.einsum("...ft,fm->...mt", spec, fb)


def save_spectrograms(
    path: str | Path, waves: list[torch.Tensor], sample_rate: int, labels: list[str] | None = None
) -> Path:
    """Stack log-mel spectrograms of ``[C, T]`` / ``[T]`` waveforms (channel mean) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or [f"#{i}" for i in range(len(waves))]
    fig, axes = plt.subplots(len(waves), 1, figsize=(10, 2.6 * len(waves)), squeeze=False)
    for ax, wav, label in zip(axes[:, 0], waves, labels):
        x = wav.detach().float().cpu()
        x = x.mean(0) if x.ndim == 2 else x
        mel = mel_spectrogram(x, sample_rate, n_fft=1024, hop_length=256, n_mels=80)
        db = 20 * mel.clamp_min(1e-5).log10()
        ax.imshow(db.numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, x.shape[-1] / sample_rate, 0, 80), vmin=float(db.max()) - 80)
        ax.set_title(label)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
