"""Image folder dataset with deterministic crops.

Train mode takes a seeded random square crop (and optional flip) per item, seeded by the
``item_seed`` the ``ResumableSampler`` passes with each index, so a resumed run sees the very same
pixels. Eval mode takes the centre crop. Files are decoded, resized and cropped by PIL on uint8
(``visualtok.data.image_io``) and only the crop becomes float. Items are
``{"image": [3, S, S] float in [0, 1], "index": int}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import data_root
from .image_io import (
    IMAGE_EXTENSIONS,
    crop_resize,
    image_hw,
    list_images,
    open_image,
    pil_to_tensor,
)
from .sampler import item_generator

__all__ = ["ImageFolderDataset", "random_crop_resize", "find_images"]


def find_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``folder``; a clear error for a missing folder or no images."""
    folder = data_root(folder)
    files = list_images(folder, recursive=recursive)
    if not files:
        raise ValueError(f"empty dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files


def random_crop_resize(
    img: torch.Tensor | Image.Image,
    size: int,
    generator: torch.Generator | None,
    resize_short: int | None = None,
    flip: bool = False,
    scale_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``[3, H, W]`` (or a ``PIL.Image``) -> ``[3, size, size]`` float: resize the short side to
    ``resize_short or size``, then crop (random with ``generator``, centre without) and optionally
    flip horizontally.

    With ``scale_range=(lo, hi)`` and a generator (training), the crop is instead a random square
    whose side is a uniform fraction in [lo, hi] of the image's short side (never smaller than
    ``size``: no upsampling), resized to ``size``: random-resized-crop scale augmentation.

    A ``PIL.Image`` is resized and cropped by PIL on uint8 (fast) with the same random draws and the
    same antialiased bicubic kernel as the tensor path; the results agree to uint8 rounding.
    """
    if scale_range is not None and generator is not None:
        out = _random_resized_crop(img, size, generator, scale_range, flip)
    else:
        h, w = image_hw(img)
        short = resize_short or size
        if short < size:
            raise ValueError(f"resize_short ({short}) must be >= the crop size ({size})")
        if min(h, w) != short:
            scale = short / min(h, w)
            nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
            img = crop_resize(img, (0, 0, h, w), (nh, nw))
            h, w = nh, nw
        if generator is None:
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        out = crop_resize(img, (top, left, size, size), (size, size))
        if flip and generator is not None and bool(torch.rand((), generator=generator) < 0.5):
            out = _flip(out)
    if isinstance(out, Image.Image):
        return pil_to_tensor(out)
    return out.clamp(0, 1).contiguous()


def _flip(img: torch.Tensor | Image.Image) -> torch.Tensor | Image.Image:
    if isinstance(img, Image.Image):
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img.flip(-1)


def _random_resized_crop(
    img: torch.Tensor | Image.Image, size: int, generator: torch.Generator,
    scale_range: tuple[float, float], flip: bool,
) -> torch.Tensor | Image.Image:
    lo, hi = scale_range
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1; got {scale_range}")
    h, w = image_hw(img)
    short = min(h, w)
    u = float(torch.rand((), generator=generator))
    side = min(short, max(size, round(short * (lo + (hi - lo) * u))))
    top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
    out = crop_resize(img, (top, left, side, side), (size, size))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        out = _flip(out)
    return out


class ImageFolderDataset(Dataset):
    """Images under a folder; ``train=True`` gives seeded random crops, else centre crops."""

    def __init__(
        self,
        root: str | Path | Sequence[Path],
        image_size: int,
        train: bool = True,
        random_flip: bool = True,
        resize_short: int | None = None,
        recursive: bool = True,
        scale_range: tuple[float, float] | None = None,
    ) -> None:
        if isinstance(root, (str, Path)):
            self.files = find_images(root, recursive=recursive)
        else:
            self.files = [Path(p) for p in root]
            if not self.files:
                raise ValueError("empty dataset: the list of image files is empty")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1; got {image_size}")
        self.image_size, self.train = image_size, train
        self.random_flip, self.resize_short = random_flip, resize_short
        self.scale_range = scale_range

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        img = open_image(self.files[index], convert=True)
        gen = item_generator(seed) if (self.train and seed is not None) else None
        img = random_crop_resize(
            img, self.image_size, gen, self.resize_short, self.random_flip, self.scale_range
        )
        return {"image": img, "index": index}
