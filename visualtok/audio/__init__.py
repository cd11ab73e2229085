"""Audio codecs (EnCodec, DAC) on the shared quantizer core, and audio I/O.

``AudioCodec`` (``base.py``) is the one interface; ``io.py`` reads/writes files with soundfile and
does resampling and spectrograms with torchaudio. Model files: ``encodec.py``, ``dac.py``.

Codes are ``[B, T_frames, n_q]`` (the zoo's ``[B, *S, F]``); the official EnCodec/DAC layout
``[B, n_q, T]`` is one transpose away: ``official = codes.codes.transpose(1, 2)``
(``AudioCodes.to_official()``), ``ours = official.transpose(1, 2)``.
"""

from .base import AudioCodec, AudioCodes, check_audio
from .io import mel_spectrogram, read_audio, resample, stft_magnitude, to_channels, write_audio

__all__ = [
    "AudioCodec",
    "AudioCodes",
    "check_audio",
    "mel_spectrogram",
    "read_audio",
    "resample",
    "stft_magnitude",
    "to_channels",
    "write_audio",
]
