"""Video clip dataset: fixed-length clips from frame folders or video files.

A clip source is either a folder of frame images (sorted by name) or a video file decoded with
PyAV (``visualtok.data.video_io``; frame counts are exact, from one decode pass per file, cached). A
video file that cannot be read is an error naming it, never silently skipped. Each item is
``num_frames`` frames ``frame_stride`` apart (seeded random start in train mode, the first frames
in eval), centre-cropped square and resized:
``{"video": [T, 3, S, S] float in [0, 1], "index": int}``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .config import data_root
from .image_io import list_images, open_image
from .images import random_crop_resize
from .sampler import item_generator
from .video_io import frame_times, read_video

__all__ = ["VideoClipDataset", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv")


class VideoClipDataset(Dataset):
    def __init__(
        self,
        root: str | Path,
        image_size: int,
        num_frames: int = 8,
        frame_stride: int = 1,
        train: bool = True,
    ) -> None:
        root = data_root(root)
        if num_frames < 1 or frame_stride < 1:
            raise ValueError("num_frames and frame_stride must be >= 1")
        span = (num_frames - 1) * frame_stride + 1
        self.sources: list[tuple[Path, int]] = []  # (frames folder or file, frame count)
        folders = [root] + sorted(d for d in root.rglob("*") if d.is_dir())
        for d in folders:
            n = len(list_images(d, recursive=False))
            if n >= span:
                self.sources.append((d, n))
        for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
            n = len(frame_times(f))  # raises, naming f, when unreadable/truncated
            if n >= span:
                self.sources.append((f, n))
        if not self.sources:
            raise ValueError(
                f"empty dataset: no frame folder or video with >= {span} frames under {root}"
            )
        self.image_size, self.num_frames, self.stride, self.train = (
            image_size,
            num_frames,
            frame_stride,
            train,
        )

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        src, n = self.sources[index]
        span = (self.num_frames - 1) * self.stride + 1
        start = 0
        if self.train and seed is not None:
            start = int(torch.randint(0, n - span + 1, (1,), generator=item_generator(seed)))
        if src.is_dir():
            files = list_images(src, recursive=False)[start : start + span : self.stride]
            frames = [open_image(f, convert=True) for f in files]  # PIL: resized before float
        else:
            idx = torch.arange(self.num_frames) * self.stride + start
            frames = read_video(src, indices=idx, size=self.image_size)  # short side resized
        if len(frames) < self.num_frames:
            raise ValueError(f"{src}: could read only {len(frames)} of {self.num_frames} frames")
        clip = torch.stack([random_crop_resize(f, self.image_size, None) for f in frames])
        return {"video": clip, "index": index}
