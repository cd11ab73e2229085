"""Audio folder dataset: mono clips of fixed length at one sample rate.

Files (wav/flac/ogg via ``soundfile``) are mixed to mono, resampled with ``torchaudio`` when their
rate differs, and cropped to ``num_samples`` (seeded random offset in train mode, start in eval;
short clips are zero-padded). Items: ``{"audio": [1, T] float, "index": int}``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import data_root
from .sampler import item_generator

__all__ = ["AudioFolderDataset", "load_audio", "AUDIO_EXTENSIONS"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """``[1, T]`` float mono waveform at ``sample_rate``."""
    import soundfile as sf
    import torchaudio.functional as AF

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    wav = torch.from_numpy(data).mean(dim=1, keepdim=True).t().contiguous()  # [1, T]
    if sr != sample_rate:
        wav = AF.resample(wav, sr, sample_rate)
    return wav


class AudioFolderDataset(Dataset):
    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        num_samples: int = 16000,
        train: bool = True,
    ) -> None:
        root = data_root(root)
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not self.files:
            raise ValueError(
                f"empty dataset: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}"
            )
        if sample_rate < 1 or num_samples < 1:
            raise ValueError("sample_rate and num_samples must be >= 1")
        self.sample_rate, self.num_samples, self.train = sample_rate, num_samples, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        wav = load_audio(self.files[index], self.sample_rate)
        n = self.num_samples
        if wav.shape[1] < n:
            wav = F.pad(wav, (0, n - wav.shape[1]))
        start = 0
        if self.train and seed is not None and wav.shape[1] > n:
            start = int(
                torch.randint(0, wav.shape[1] - n + 1, (1,), generator=item_generator(seed))
            )
        return {"audio": wav[:, start : start + n], "index": index}
