"""visualtok.data: training datasets (image folders, tar shards, video clips, audio) and the
resumable sampler. ``build_dataset(DataConfig, train)`` builds the one a config names."""

from __future__ import annotations

from torch.utils.data import Dataset

from .config import DataConfig
from .sampler import ResumableSampler

__all__ = ["build_dataset", "DataConfig", "ResumableSampler"]


def build_dataset(config: DataConfig, train: bool = True) -> Dataset:
    """Map-style dataset for ``config.type`` (images | shards | video | audio)."""
    if config.path is None:
        raise ValueError("data.path is not set: give a folder (or shard pattern) in the config")
    crop = train and config.random_crop
    # the two still-image datasets share one transform (crop, flip, resize, scale augmentation)
    image_options = dict(
        train=crop,
        random_flip=config.random_flip,
        resize_short=config.resize_short,
        scale_range=config.scale_range,
    )
    if config.type == "images":
        from .images import ImageFolderDataset

        return ImageFolderDataset(
            config.path, config.image_size, recursive=config.recursive, **image_options
        )
    if config.type == "shards":
        from .shards import ImageShardDataset

        return ImageShardDataset(config.path, config.image_size, **image_options)
    if config.type == "video":
        from .video import VideoClipDataset

        return VideoClipDataset(
            config.path,
            config.image_size,
            config.num_frames,
            frame_stride=config.frame_stride,
            train=crop,
        )
    if config.type == "video_synthetic":  # pans/zooms over still photos: SYNTHETIC video
        from .synthetic_video import PanZoomDataset

        return PanZoomDataset(config.path, config.image_size, config.num_frames, train=crop)
    if config.type == "audio":
        from .audio import AudioFolderDataset

        return AudioFolderDataset(config.path, config.sample_rate, config.num_samples, train=crop)
    raise ValueError(
        f"data.type must be images | shards | video | video_synthetic | audio; got {config.type!r}"
    )
