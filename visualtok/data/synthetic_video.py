"""SYNTHETIC video from still photos: seeded camera pans and zooms (not real video; label it so).

Real clips are scarce offline (``../shared/data/video`` holds about 47 s). For tokenizer smoke
training, ``PanZoomDataset`` turns each photo into a clip: a square window moves linearly across
the (centre-square-cropped) photo and scales by a zoom factor over the clip, rendered with
bilinear ``grid_sample``. Motion is smooth and consistent, but there is no parallax, occlusion or
object motion. Items: ``{"video": [T, 3, S, S] in [0, 1], "index": int}``, seeded per
``(index, seed)`` like the other datasets.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import data_root
from .image_io import list_images, load_image
from .sampler import item_generator

__all__ = ["pan_zoom_clip", "PanZoomDataset"]


def pan_zoom_clip(
    photo: torch.Tensor,
    num_frames: int,
    size: int,
    generator: torch.Generator | None = None,
    max_zoom: float = 1.5,
    window: tuple[float, float] = (0.45, 0.8),
) -> torch.Tensor:
    """``[3, H, W]`` -> ``[T, 3, size, size]``: a window of a random fraction ``window`` of the
    photo's short side pans from one random point to another and zooms by up to ``max_zoom``."""
    if photo.ndim != 3 or photo.shape[0] != 3:
        raise ValueError(f"photo must be [3, H, W]; got {tuple(photo.shape)}")
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be >= 1; got {num_frames}, {size}")
    _, h, w = photo.shape
    m = min(h, w)
    sq = photo[:, (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m].float()
    r = torch.rand(6, generator=generator)
    side0 = window[0] + (window[1] - window[0]) * float(r[0])  # window side / photo side
    zoom = 1.0 + (max_zoom - 1.0) * float(r[1])
    side1 = side0 / zoom if float(r[2]) < 0.5 else min(side0 * zoom, 1.0)  # zoom in or out
    t = torch.linspace(0, 1, num_frames)
    side = side0 + (side1 - side0) * t  # [T], in units of the photo side
    # window centres stay inside the photo: |c| <= 1 - side (normalised coordinates)
    start = (torch.stack([r[3], r[4]]) * 2 - 1) * (1 - side0)
    end = (torch.stack([r[5], 1 - r[3]]) * 2 - 1) * (1 - side1)
    centre = start[None] + (end - start)[None] * t[:, None]  # [T, 2] (x, y)
    theta = torch.zeros(num_frames, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, (num_frames, 3, size, size), align_corners=False)
    frames = F.grid_sample(sq[None].expand(num_frames, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="border", align_corners=False)
    return frames.clamp(0, 1)


class PanZoomDataset(Dataset):
    """SYNTHETIC clips: one seeded pan/zoom per photo under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, image_size: int, num_frames: int = 8,
                 train: bool = True) -> None:
        root = data_root(root)
        self.files = list_images(root)
        if not self.files:
            raise ValueError(f"empty dataset: no images under {root}")
        self.image_size, self.num_frames, self.train = image_size, num_frames, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        g = item_generator(seed if (self.train and seed is not None) else index)
        photo = load_image(self.files[index], convert=True)
        return {"video": pan_zoom_clip(photo, self.num_frames, self.image_size, g),
                "index": index}
