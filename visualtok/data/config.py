"""``DataConfig``: which dataset a training run reads and how it crops and batches it (the
``data:`` section of a training config; ``visualtok.data.build_dataset`` builds it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataConfig"]


@dataclass
class DataConfig:
    type: str = "images"  # images | shards | video | audio | tokens (task specific)
    # folder / shard pattern; relative paths resolve against the config file
    path: str | None = None
    image_size: int = 64  # square crop side for image datasets
    random_crop: bool = True  # train: seeded random crop + flip; False: centre crop
    random_flip: bool = True
    # resize the short side to this before cropping (None = crop size)
    resize_short: int | None = None
    # train: random-resized crop whose side is a uniform fraction [lo, hi] of the short side
    scale_range: tuple[float, float] | None = None
    recursive: bool = True
    num_workers: int = 0
    # video / audio
    num_frames: int = 8
    frame_stride: int = 1
    sample_rate: int = 16000
    num_samples: int = 16000  # audio crop length
    # decoder post-training / generator data
    token_file: str | None = None  # safetensors file with ``codes`` aligned with the dataset order
