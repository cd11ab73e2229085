"""Audio reconstruction metrics: SI-SDR, multi-scale mel distance, multi-resolution STFT distance,
and PESQ / STOI through their packages (the ``eval`` extra).

All take ``[B, C, T]`` (or ``[B, T]``) float waveforms and return one value per item ``[B]``;
the estimate is trimmed or zero-padded to the reference length first (codec outputs can be a few
samples longer or shorter).

* **SI-SDR** (Le Roux et al. 2019), dB, on zero-mean signals, averaged over channels.
* **mel distance**: DAC's multi-scale mel loss as a metric: L1 between ``log10`` mel magnitudes
  (clamped at 1e-5) at window lengths 32..2048 with 5..320 mels (7 scales), hop = window / 4,
  averaged over scales.
* **STFT distance**: L1 of ``log10`` magnitudes plus L1 of magnitudes at windows 2048 and 512
  (hop = window / 4), averaged over the two.
* **PESQ** wide-band (ITU-T P.862.2, 16 kHz; audio is resampled) and **STOI** (Taal et al. 2011,
  10 kHz internally): mono mix of each item; ``pesq`` / ``pystoi`` must be installed.
* UTMOS, WavLM speaker similarity and Whisper WER need network weights that cannot be had here:
  ``UNAVAILABLE`` lists them with the reason, and no number is ever made up for them.
"""

from __future__ import annotations

import importlib

import torch

from ..audio.io import mel_spectrogram, resample, stft_magnitude

__all__ = ["si_sdr", "mel_distance", "stft_distance", "pesq_wb", "stoi", "UNAVAILABLE",
           "MEL_SCALES"]

MEL_SCALES = ((32, 5), (64, 10), (128, 20), (256, 40), (512, 80), (1024, 160), (2048, 320))
STFT_WINDOWS = (2048, 512)
UNAVAILABLE = {
    "utmos": "needs the UTMOS (SSL-MOS) network weights, not obtainable offline",
    "speaker_similarity": "needs WavLM-large speaker-verification weights, not obtainable offline",
    "wer": "needs Whisper weights, not obtainable offline",
}


def _pair(est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if est.ndim == 2:
        est, ref = est[:, None], ref[:, None] if ref.ndim == 2 else ref
    if ref.ndim == 2:
        ref = ref[:, None]
    if est.ndim != 3 or ref.ndim != 3 or est.shape[:2] != ref.shape[:2]:
        raise ValueError(f"estimate and reference must be [B, C, T] with equal B, C; got "
                         f"{tuple(est.shape)} and {tuple(ref.shape)}")
    t = ref.shape[-1]
    est = est[..., :t] if est.shape[-1] >= t else torch.nn.functional.pad(
        est, (0, t - est.shape[-1]))
    return est.double(), ref.double()


def si_sdr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant signal-to-distortion ratio in dB, ``[B]``."""
    est, ref = _pair(est, ref)
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    ratio = (target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio)).mean(-1).float()


def mel_distance(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Multi-scale log-mel L1 distance ``[B]`` (see the module docstring)."""
    est, ref = _pair(est, ref)
    out = []
    for win, mels in MEL_SCALES:
        a = mel_spectrogram(est.float(), sample_rate, n_fft=win, hop_length=win // 4, n_mels=mels)
        b = mel_spectrogram(ref.float(), sample_rate, n_fft=win, hop_length=win // 4, n_mels=mels)
        la, lb = a.clamp_min(1e-5).log10(), b.clamp_min(1e-5).log10()
        out.append((la - lb).abs().mean(dim=(-3, -2, -1)))
    return torch.stack(out).mean(0)


def stft_distance(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT distance ``[B]``: log-magnitude L1 + magnitude L1."""
    est, ref = _pair(est, ref)
    out = []
    for win in STFT_WINDOWS:
        a = stft_magnitude(est.float(), n_fft=win, hop_length=win // 4)
        b = stft_magnitude(ref.float(), n_fft=win, hop_length=win // 4)
        log_l1 = (a.clamp_min(1e-5).log10() - b.clamp_min(1e-5).log10()).abs()
        out.append(log_l1.mean(dim=(-3, -2, -1)) + (a - b).abs().mean(dim=(-3, -2, -1)))
    return torch.stack(out).mean(0)


def _score_16k(est: torch.Tensor, ref: torch.Tensor, sample_rate: int, metric: str,
               package: str, score) -> torch.Tensor:
    """Per-clip ``score(ref, est, module)`` ``[B]`` on mono 16 kHz numpy audio, with ``package``
    (an optional dependency from the ``eval`` extra) imported for it."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ValueError(
            f"{metric} needs the {package!r} package: pip install -e '.[eval]'"
        ) from None
    est, ref = _pair(est, ref)
    e = resample(est.float().mean(1), sample_rate, 16000).cpu().numpy()
    r = resample(ref.float().mean(1), sample_rate, 16000).cpu().numpy()
    return torch.tensor([float(score(r[i], e[i], module)) for i in range(len(r))])


def pesq_wb(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Wide-band PESQ (MOS-LQO, 1.04..4.64) ``[B]`` at 16 kHz; needs ``pip install pesq``."""
    return _score_16k(est, ref, sample_rate, "PESQ", "pesq",
                      lambda r, e, m: m.pesq(16000, r, e, "wb"))


def stoi(est: torch.Tensor, ref: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Short-time objective intelligibility (0..1) ``[B]``; needs ``pip install pystoi``."""
    return _score_16k(est, ref, sample_rate, "STOI", "pystoi",
                      lambda r, e, m: m.stoi(r, e, 16000, extended=False))
