"""Cut a training set of square crops from a folder of real photos (deterministic).

    python train/make_patches.py ../shared/data/images runs/patches128 --size 128 \
        --scales 0.25 0.5 --stride 96 --exclude kodak
    python train/make_patches.py ../shared/data/images runs/photos320 --resize-short 320

The second form writes whole photos, downscaled so the short side is at most 320 (for training
with random-resized crops, ``data.scale_range``); photos smaller than 128 px are skipped.

Every image (alpha composited on grey) is resized by each scale (Lanczos) and tiled with
``size``-pixel crops every ``stride`` pixels; near-flat crops (pixel std below ``--min-std``) are
dropped. Sub-folders named by ``--exclude`` are skipped, so held-out sets (Kodak) never leak into
training. Crops keep the photo's first-level folder (its collection), which ``pretokenize.py`` turns
into class labels. Crops are written as JPEG (quality 90) to keep the set small enough to
ship to a GPU box.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from visualtok.data.image_io import list_images, open_image


def make_patches(
    src: Path,
    out: Path,
    size: int,
    scales: list[float],
    stride: int,
    exclude: list[str],
    min_std: float = 8.0,
) -> int:
    """Write the crops of every photo under ``src`` to ``out``; returns how many were written."""
    files = [f for f in list_images(src) if not set(f.relative_to(src).parts[:-1]) & set(exclude)]
    if not files:
        raise ValueError(f"no images under {src} (after excluding {exclude})")
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in tqdm(files, desc="photos"):
        base = open_image(path, convert=True)
        rel = path.relative_to(src).with_suffix("").parts
        folder = out / rel[0] if len(rel) > 1 else out
        folder.mkdir(parents=True, exist_ok=True)
        stem = "__".join(rel)
        for s in scales:
            w, h = max(1, round(base.width * s)), max(1, round(base.height * s))
            arr = np.asarray(base if s == 1.0 else base.resize((w, h), Image.LANCZOS))
            for y in range(0, arr.shape[0] - size + 1, stride):
                for x in range(0, arr.shape[1] - size + 1, stride):
                    crop = arr[y : y + size, x : x + size]
                    if crop.std() < min_std:
                        continue
                    Image.fromarray(crop).save(folder / f"{stem}__s{s:g}_{y}_{x}.jpg", quality=90)
                    count += 1
    return count


def downscale_photos(src: Path, out: Path, short_side: int, exclude: list[str],
                     min_side: int = 128) -> int:
    """Write every photo under ``src`` with its short side reduced to ``short_side`` (JPEG 92)."""
    files = [f for f in list_images(src) if not set(f.relative_to(src).parts[:-1]) & set(exclude)]
    count = 0
    for path in tqdm(files, desc="photos"):
        im = open_image(path, convert=True)
        s = min(im.size)
        if s < min_side:
            continue
        if s > short_side:
            r = short_side / s
            im = im.resize((round(im.width * r), round(im.height * r)), Image.LANCZOS)
        dest = out / path.relative_to(src).with_suffix(".jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        im.save(dest, quality=92)
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--stride", type=int, default=96)
    p.add_argument("--min-std", type=float, default=8.0)
    p.add_argument("--exclude", nargs="*", default=["kodak"], help="sub-folder names to skip")
    p.add_argument("--resize-short", type=int, default=None,
                   help="write whole photos with this short side instead of crops")
    a = p.parse_args(argv)
    if a.resize_short:
        n = downscale_photos(a.src, a.out, a.resize_short, a.exclude)
        print(f"{n} photos -> {a.out}")
        return 0
    n = make_patches(a.src, a.out, a.size, a.scales, a.stride, a.exclude, a.min_std)
    print(f"{n} patches -> {a.out}")
    return 0


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
