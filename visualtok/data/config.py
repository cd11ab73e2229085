"""``DataConfig``: which dataset a training run reads and how it crops and batches it (the
``data:`` section of a training config; ``visualtok.data.build_dataset`` builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from ..config import Config, NonNegativeInt, PositiveInt, Range

__all__ = ["DataConfig"]

ScaleFraction = Annotated[float, Range(gt=0, le=1)]  # a crop side over the short side


@dataclass
class DataConfig(Config):
    type: str = "images"  # images | shards | video | audio | tokens (task specific)
    # folder / shard pattern; relative paths resolve against the config file
    path: str | None = None
    image_size: PositiveInt = 64  # square crop side for image datasets
    random_crop: bool = True  # train: seeded random crop + flip; False: centre crop
    random_flip: bool = True
    # resize the short side to this before cropping (None = crop size)
    resize_short: PositiveInt | None = None
    # train: random-resized crop whose side is a uniform fraction [lo, hi] of the short side
    scale_range: tuple[ScaleFraction, ScaleFraction] | None = None
    recursive: bool = True
    num_workers: NonNegativeInt = 0
    # video / audio
    num_frames: PositiveInt = 8
    frame_stride: PositiveInt = 1
    sample_rate: PositiveInt = 16000
    num_samples: PositiveInt = 16000  # audio crop length
    # decoder post-training / generator data
    token_file: str | None = None  # safetensors file with ``codes`` aligned with the dataset order

    def validate(self) -> DataConfig:
        super().validate()
        if self.scale_range is not None and self.scale_range[0] > self.scale_range[1]:
            raise ValueError(
                f"DataConfig.scale_range must be [lo, hi] with lo <= hi; got "
                f"{list(self.scale_range)}"
            )
        return self


def data_root(path: str | Path) -> Path:
    """``data.path`` as a ``Path`` that exists; a ``FileNotFoundError`` that says how to set it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"data path {path} does not exist (set data.path in the config, or $VISUALTOK_DATA)"
        )
    return path
