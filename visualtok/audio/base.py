"""The audio codec interface (``AudioCodec``), its encode result (``AudioCodes``) and validation.

``AudioCodec`` is the audio counterpart of ``ImageTokenizer``, one API for EnCodec, DAC and ours:

* ``encode(wav [B, C, T] in [-1, 1], sample_rate, n_q=None) -> AudioCodes`` whose ``.codes`` are
  ``[B, T_f, n_q]`` int64 (the zoo's ``[B, *S, F]`` convention: frames are S, the residual levels
  are the factors), ``.lengths [B]`` the valid frames of each item of a padded batch,
  ``.num_samples [B]`` the input lengths and ``.scales`` per-chunk input scales (EnCodec 48 kHz);
* ``decode(codes)`` accepts an ``AudioCodes`` or a bare ``[B, T_f, q]`` tensor and returns
  ``[B, C, T']``; fewer levels ``q`` decode at a lower bitrate (coarse-to-fine prefix);
* ``sample_rate``, ``channels``, ``hop_length``, ``frame_rate``, ``max_codebooks``,
  ``codebook_size`` and ``bitrate(n_q)`` (bits per second).

EnCodec and DAC users who want their ``[B, n_q, T]`` layout: ``codes.codes.transpose(1, 2)``
(``AudioCodes.to_official()``); back: ``torch.as_tensor(official).transpose(1, 2)``.

A padded batch passes ``lengths`` (samples per item). Convolutions pad at the signal's own end
(EnCodec reflect-pads, normalisation uses the whole chunk), so each item is encoded at its own
length: items of equal length run as one batch, and the result equals encoding them one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import PretrainedMixin
from ..quantize.config import QuantizerConfig, build_quantizer
from .io import resample as resample_audio

__all__ = ["AudioCodec", "ConvRVQCodec", "AudioCodes", "check_audio", "dac_rvq_config"]


@dataclass
class AudioCodes:
    """Result of ``AudioCodec.encode``; ``AudioCodec.decode`` takes it back as it is."""

    codes: torch.Tensor  # [B, T_f, n_q] int64, levels coarse to fine; frames past lengths are 0
    lengths: torch.Tensor  # [B] int64 valid frames of each item
    num_samples: torch.Tensor  # [B] int64 input samples of each item (decode trims to these)
    scales: torch.Tensor | None = None  # [B, n_chunks] input scale of each chunk (EnCodec 48 kHz)
    codec_id: str | None = None  # fingerprint of the codec that made them (None: not checked)

    @property
    def n_q(self) -> int:
        return int(self.codes.shape[-1])

    def to_official(self) -> torch.Tensor:
        """The EnCodec/DAC layout ``[B, n_q, T_f]``."""
        return self.codes.transpose(1, 2)

    def to(self, device: torch.device | str) -> AudioCodes:
        s = self.scales.to(device) if self.scales is not None else None
        return AudioCodes(self.codes.to(device), self.lengths.to(device),
                          self.num_samples.to(device), s, self.codec_id)


def check_audio(wav: object, channels: int | None = None, name: str = "wav") -> torch.Tensor:
    """Validate ``[B, C, T]`` float audio in [-1, 1]: non-empty, finite, at most ``channels``."""
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, C, T]; got {type(wav).__name__}")
    if not wav.dtype.is_floating_point:
        raise TypeError(f"{name} must be float audio [B, C, T] in [-1, 1]; got dtype {wav.dtype}")
    if wav.ndim != 3:
        raise ValueError(f"{name} must be [B, C, T] (batch, channels, samples); "
                         f"got shape {tuple(wav.shape)}")
    if wav.shape[0] == 0 or wav.shape[1] == 0 or wav.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(wav.shape)} (need B, C, T >= 1)")
    if channels is not None and wav.shape[1] != channels:
        what = "too many" if wav.shape[1] > channels else "too few"
        raise ValueError(
            f"{name} has {what} channels: the model takes {channels}-channel audio [B, "
            f"{channels}, T]; got shape {tuple(wav.shape)} (convert with "
            "visualtok.audio.io.to_channels)"
        )
    peak = float(wav.detach().abs().max())
    if not math.isfinite(peak):
        raise ValueError(f"{name} contains NaN or inf samples")
    if peak > 1.0 + 1e-4:
        raise ValueError(f"{name} must be in [-1, 1]; got a peak of {peak:.4g} (scale it first)")
    return wav


class AudioCodec(nn.Module, PretrainedMixin):
    """Base class of audio codecs. Subclasses implement ``_encode``/``_decode`` (see below)."""

    # ------------------------------------------------------------------ description
    # Read from the codec's dataclass ``config`` and residual ``quantizer``; a codec whose config
    # names them differently overrides the property.
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def channels(self) -> int:
        return getattr(self.config, "channels", 1)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def max_codebooks(self) -> int:
        return self.quantizer.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def code_layout(self):
        return self.quantizer.layout

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.hop_length

    def bitrate(self, n_q: int | None = None) -> float:
        """Bits per second of ``n_q`` levels (all when None)."""
        n_q = self._check_n_q(n_q)
        return n_q * math.log2(self.codebook_size) * self.frame_rate

    def num_frames(self, num_samples: int) -> int:
        """Code frames for ``num_samples`` input samples."""
        return math.ceil(num_samples / self.hop_length)

    # ------------------------------------------------------------------ to implement
    def _encode(
        self, wav: torch.Tensor, n_q: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fp32 ``[B, C, T]`` (one length) -> (codes ``[B, T_f, n_q]``, scales or None)."""
        raise NotImplementedError

    def _decode(
        self, codes: torch.Tensor, scales: torch.Tensor | None, num_samples: int | None
    ) -> torch.Tensor:
        """Codes ``[B, T_f, q]`` of one length -> ``[B, C, T']`` (trimmed to ``num_samples``)."""
        raise NotImplementedError

    def codec_id(self) -> str | None:
        """Fingerprint stamped on ``AudioCodes`` by ``encode`` and checked by ``decode`` (None:
        no check; our ``Codec`` hashes its codebooks)."""
        return None

    # ------------------------------------------------------------------ validation
    def _check_codec_id(self, codes: AudioCodes) -> None:
        mine = self.codec_id()
        if mine is not None and codes.codec_id is not None and codes.codec_id != mine:
            raise ValueError(f"these codes were made by another codec ({codes.codec_id}); this "
                             f"model is {mine}: decode them with the codec that encoded them")

    def _check_n_q(self, n_q: int | None) -> int:
        if n_q is None:
            return self.max_codebooks
        if isinstance(n_q, bool) or not isinstance(n_q, int) or not 1 <= n_q <= self.max_codebooks:
            raise ValueError(f"n_q must be an int in [1, {self.max_codebooks}] (the model's "
                             f"codebooks); got {n_q!r}")
        return n_q

    def check_codes(self, codes: object) -> torch.Tensor:
        """Validate codes ``[B, T_f, q]`` (1 <= q <= max_codebooks) in ``[0, codebook_size)``."""
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be AudioCodes or a torch.Tensor [B, T_f, n_q]; "
                            f"got {type(codes).__name__}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            raise TypeError(f"codes must be an integer tensor; got dtype {codes.dtype}")
        if codes.ndim != 3 or not 1 <= codes.shape[-1] <= self.max_codebooks:
            raise ValueError(f"codes must be [B, T_f, n_q] with 1 <= n_q <= {self.max_codebooks}; "
                             f"got shape {tuple(codes.shape)}")
        if codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes are empty: shape {tuple(codes.shape)}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"codes out of range: values must be in [0, {self.codebook_size}) "
                             f"for this model; got min {lo}, max {hi} (codes from another model?)")
        return codes.long()

    def _prepare(self, wav: object, sample_rate: int, resample: bool) -> torch.Tensor:
        wav = check_audio(wav, self.channels)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive int (Hz); got {sample_rate!r}")
        if sample_rate != self.sample_rate:
            if not resample:
                raise ValueError(
                    f"wrong sample rate: the model takes {self.sample_rate} Hz audio; got "
                    f"{sample_rate} Hz (pass resample=True to resample it)"
                )
            wav = resample_audio(wav.float(), sample_rate, self.sample_rate)
        return wav.to(self._param_dtype())

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode(
        self,
        wav: torch.Tensor,
        sample_rate: int,
        n_q: int | None = None,
        lengths: torch.Tensor | None = None,
        resample: bool = False,
    ) -> AudioCodes:
        """``[B, C, T]`` audio in [-1, 1] at ``sample_rate`` -> ``AudioCodes`` with ``n_q`` levels.

        ``lengths [B]`` (samples, at ``sample_rate``) marks a right-padded batch.
        """
        n_q = self._check_n_q(n_q)
        wav = self._prepare(wav, sample_rate, resample)
        b, t = wav.shape[0], wav.shape[-1]
        if lengths is None:
            n = torch.full((b,), t, dtype=torch.long)
        else:
            n = torch.as_tensor(lengths).long().cpu().reshape(-1)
            if n.numel() != b or bool((n < 1).any()):
                raise ValueError(f"lengths must be [B] = [{b}] positive sample counts; "
                                 f"got {tuple(n.shape)} {n.tolist()[:8]}")
            if sample_rate != self.sample_rate:
                n = torch.tensor([math.ceil(int(v) * self.sample_rate / sample_rate) for v in n])
            if bool((n > t).any()):
                raise ValueError(f"lengths must be <= the padded length {t}; got {n.tolist()[:8]}")
        groups = [(int(v), (n == v).nonzero().flatten()) for v in torch.unique(n)]
        if len(groups) == 1:
            codes, scales = self._encode(wav[..., : groups[0][0]], n_q)
            frames = torch.full((b,), codes.shape[1], dtype=torch.long)
            return AudioCodes(codes, frames, n, scales, self.codec_id())
        parts = {}
        for length, idx in groups:
            parts[length] = (idx, *self._encode(wav[idx, :, :length], n_q))
        t_f = max(p[1].shape[1] for p in parts.values())
        codes = torch.zeros(b, t_f, n_q, dtype=torch.long, device=wav.device)
        frames = torch.zeros(b, dtype=torch.long)
        scales = None
        for idx, c, s in parts.values():
            codes[idx.to(wav.device), : c.shape[1]] = c
            frames[idx] = c.shape[1]
            if s is not None:
                if scales is None:
                    n_chunks = max(p[2].shape[1] for p in parts.values())
                    scales = torch.ones(b, n_chunks, dtype=s.dtype, device=s.device)
                scales[idx.to(s.device), : s.shape[1]] = s
        return AudioCodes(codes, frames, n, scales, self.codec_id())

    @torch.no_grad()
    def decode(self, codes: AudioCodes | torch.Tensor) -> torch.Tensor:
        """``AudioCodes`` (or codes ``[B, T_f, q]``) -> audio ``[B, C, T']`` (float32).

        With ``AudioCodes`` each item is trimmed to its ``num_samples`` (zeros past it).
        """
        if not isinstance(codes, AudioCodes):
            c = self.check_codes(codes)
            return self._decode(c.to(self._device()), None, None).float()
        self._check_codec_id(codes)
        c = self.check_codes(codes.codes).to(self._device())
        lengths, n = codes.lengths.cpu().long(), codes.num_samples.cpu().long()
        scales = codes.scales
        if lengths.shape != (c.shape[0],) or n.shape != (c.shape[0],):
            raise ValueError(f"AudioCodes.lengths and .num_samples must be [B] = [{c.shape[0]}]")
        if bool((lengths > c.shape[1]).any()) or bool((lengths < 1).any()):
            raise ValueError(f"AudioCodes.lengths must be in [1, {c.shape[1]}] frames (the codes' "
                             f"T_f); got {lengths.tolist()[:8]}")
        for f, s in zip(lengths.tolist(), n.tolist()):
            if self.num_frames(s) != f:
                raise ValueError(f"AudioCodes do not fit together: {s} samples need "
                                 f"{self.num_frames(s)} frames, lengths says {f}")
        keys = torch.stack([lengths, n], 1)
        uniq = torch.unique(keys, dim=0)
        if len(uniq) == 1:
            f, s = int(uniq[0, 0]), int(uniq[0, 1])
            return self._decode(c[:, :f], scales, s).float()
        out = torch.zeros(c.shape[0], self.channels, int(n.max()), device=c.device)
        for f, s in uniq.tolist():
            idx = ((keys[:, 0] == f) & (keys[:, 1] == s)).nonzero().flatten()
            sc = scales[idx.to(scales.device)] if scales is not None else None
            y = self._decode(c[idx.to(c.device), :f], sc, s).float()
            out[idx.to(c.device), :, : y.shape[-1]] = y
        return out

    @torch.no_grad()
    def reconstruct(
        self, wav: torch.Tensor, sample_rate: int, n_q: int | None = None, resample: bool = False
    ) -> torch.Tensor:
        """``decode(encode(wav))``, trimmed to the input length (at the model's rate)."""
        return self.decode(self.encode(wav, sample_rate, n_q=n_q, resample=resample))

    # ------------------------------------------------------------------ helpers
    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype if p.dtype.is_floating_point else torch.float32
        return torch.float32

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def dac_rvq_config(config, **extra) -> QuantizerConfig:
    """DAC's residual quantizer for a codec ``config`` (``latent_dim``, ``codebook_size``,
    ``codebook_dim``, ``n_codebooks``, ``quantizer_dropout``): factorised l2-normalised codes,
    raw codebook rows at decode, per-sample quantizer dropout, gradients into every level's
    projections; ``extra`` adds options (k-means init, dead-code restart)."""
    return QuantizerConfig(
        type="rvq", dim=config.latent_dim, codebook_size=config.codebook_size,
        codebook_dim=config.codebook_dim, num_quantizers=config.n_codebooks, l2_normalize=True,
        raw_codebook_rows=True, beta=0.25, quantizer_dropout=config.quantizer_dropout,
        dropout_per_sample=True, all_level_gradients=True, **extra,
    )


class ConvRVQCodec(AudioCodec):
    """A codec that is ``encoder -> residual quantizer -> decoder`` on mono audio right-padded to a
    multiple of the hop (DAC, visualtok's ``Codec``): the training and codec hooks, once.

    Subclasses name their encoder (``[B, 1, T] -> [B, D, T_f]``) and decoder (``[B, D, T_f] ->
    [B, 1, T']``) classes and the initialiser applied to every submodule; the quantizer is the RVQ
    of ``config.quantizer_config()``.
    """

    encoder_class: type[nn.Module]
    decoder_class: type[nn.Module]
    init_weights: Callable[[nn.Module], None]

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config.validate()
        self.encoder = self.encoder_class(config)
        self.quantizer = build_quantizer(config.quantizer_config())
        self.decoder = self.decoder_class(config)
        self.apply(self.init_weights)

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T]`` -> latents ``[B, T_f, latent_dim]`` (channels last), after right-padding
        to a multiple of the hop."""
        pad = math.ceil(wav.shape[-1] / self.hop_length) * self.hop_length - wav.shape[-1]
        return self.encoder(F.pad(wav, (0, pad)) if pad else wav).transpose(1, 2)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, T_f, latent_dim]`` -> ``[B, 1, T']``."""
        return self.decoder(z_q.transpose(1, 2))

    def forward(self, wav: torch.Tensor):
        """Training step: (reconstruction ``[B, 1, T]``, QuantOutput)."""
        quant = self.quantizer(self.encode_latents(wav))
        return self.decode_latents(quant.z_q)[..., : wav.shape[-1]], quant

    # ------------------------------------------------------------------ codec hooks
    def _encode(self, wav: torch.Tensor, n_q: int):
        return self.quantizer.encode(self.encode_latents(wav), depth=n_q), None

    def _decode(self, codes: torch.Tensor, scales: torch.Tensor | None, num_samples: int | None):
        y = self.decode_latents(self.quantizer.decode(codes).to(self._param_dtype()))
        return y[..., :num_samples] if num_samples is not None else y
