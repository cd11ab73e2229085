"""Image files <-> tensors: the one place the library reads and writes pictures.

Tensors follow the library convention (DESIGN §3): float ``[3, H, W]`` (or ``[B, 3, H, W]``) RGB in
[0, 1]. A file that is not RGB (grayscale, palette, CMYK, with alpha) is refused with an error
naming it and its mode, unless the caller asks for ``convert=True``: then it is converted
explicitly (alpha composited on white) and the conversion is logged, never done silently. Datasets
and evaluation folders convert; a single file a user gives the CLI is refused unless
``--convert-rgb``. Saving rounds to uint8 (not floors), the
same conversion the FID protocol uses.

Loading is fast: files are decoded, cropped and resized by PIL on uint8 (``load_image(path, size)``,
``center_crop_resize`` / ``visualtok.data.images.random_crop_resize`` given a ``PIL.Image``), and
only the small result becomes float. The resize is the same antialiased bicubic (a = -0.5) that
``F.interpolate(..., antialias=True)`` applies to float tensors, so both agree to uint8 rounding.
Torch bicubic on full-resolution float images is much slower (``benchmarks/bench_image_io.py``).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "open_image",
    "pil_to_tensor",
    "load_image",
    "crop_resize",
    "image_hw",
    "select_subset",
    "save_image",
    "list_images",
    "center_crop_resize",
    "save_grid",
    "to_uint8",
    "to_float",
    "validate_images",
    "iter_image_batches",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")

# Float images may overshoot [0, 1] by resampling noise; anything beyond this is a range error
# (e.g. images in [-1, 1] or [0, 255] passed by mistake).
RANGE_SLACK = 1e-3


def validate_images(
    images: object,
    name: str = "images",
    *,
    batched: bool = True,
    image_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Check RGB images: float in [0, 1] or uint8, ``[B, 3, H, W]``; return them unchanged.

    With ``batched=False`` a single image ``[3, H, W]`` is accepted too. ``image_size`` (H, W),
    when given, must match exactly. Every error names what was expected and what came in.
    """
    shapes = "[B, 3, H, W]" if batched else "[3, H, W] or [B, 3, H, W]"
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor {shapes} in [0, 1]; got {type(images).__name__}"
        )
    shape = tuple(images.shape)
    if images.ndim not in ((4,) if batched else (3, 4)):
        raise ValueError(f"{name} must be {shapes} RGB in [0, 1] or uint8; got shape {shape}")
    channels = shape[-3]
    if channels != 3:
        hint = " (convert grayscale/RGBA to RGB explicitly)" if channels in (1, 2, 4) else ""
        raise ValueError(
            f"{name} must be RGB {shapes}; got {channels} channels, shape {shape}{hint}"
        )
    if image_size is not None and tuple(shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"{name} must be {image_size[0]}x{image_size[1]} for this tokenizer "
            f"([B, 3, {image_size[0]}, {image_size[1]}]); got shape {shape}"
        )
    if images.dtype == torch.uint8:
        return images
    if not images.dtype.is_floating_point:
        raise TypeError(f"{name} must be float in [0, 1] or uint8; got dtype {images.dtype}")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        finite = math.isfinite(lo) and math.isfinite(hi)
        if not finite or lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
            raise ValueError(
                f"{name} must be float in [0, 1] or uint8; got values in [{lo:.4g}, {hi:.4g}]"
            )
    return images


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] (``x / 255``); float images pass through unchanged."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] -> uint8 by rounding (``round(x * 255)``), clamped; uint8 passes through."""
    if images.dtype == torch.uint8:
        return images
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be float in [0, 1] or uint8; got dtype {images.dtype}")
    return (images.detach().float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def open_image(
    source: str | Path | bytes, name: str | None = None, convert: bool = False
) -> Image.Image:
    """Decode an image file (a path, or the bytes of one) -> a loaded RGB ``PIL.Image``.

    A non-RGB file is a ``ValueError`` naming it and its mode, unless ``convert``: then grayscale /
    palette / CMYK files become RGB and RGBA / LA are composited on white, each conversion logged
    at INFO level with the file name (``name``, default the path). An unreadable file is a
    ``ValueError`` naming it.
    """
    if isinstance(source, (bytes, bytearray)):
        label, fp = name or "<bytes>", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        label, fp = name or path.name, path
    try:
        with Image.open(fp) as im:
            im.load()
            if im.mode != "RGB" and not convert:
                raise ValueError(
                    f"{label}: a {im.mode!r} image, not RGB; tokenizers take 3-channel RGB "
                    "images: convert it first, or pass convert=True (CLI: --convert-rgb) to expand "
                    "gray to RGB and composite alpha on white"
                )
            return _to_rgb(im, label)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{label}: not a readable image file ({e})") from None


def _to_rgb(im: Image.Image, label: str) -> Image.Image:
    mode = im.mode
    if mode == "P":  # palette: may carry transparency
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode_note = f"palette ({mode}) -> {im.mode}"
    else:
        mode_note = ""
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        log.info("%s: %s image with alpha composited on white -> RGB", label, mode_note or mode)
    elif im.mode != "RGB":
        log.info("%s: converted %s image to RGB", label, im.mode)
        im = im.convert("RGB")
    else:
        if mode_note:
            log.info("%s: converted %s", label, mode_note)
        im = im.copy()  # detached from the file handle
    return im


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` -> float ``[3, H, W]`` in [0, 1] (``x / 255``)."""
    if im.mode != "RGB":
        raise ValueError(f"expected an RGB image; got mode {im.mode!r} (use open_image)")
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_image(
    path: str | Path, size: int | Sequence[int] | None = None, convert: bool = False
) -> torch.Tensor:
    """Read an image file -> float ``[3, H, W]`` RGB in [0, 1].

    With ``size`` (int or ``(H, W)``) the image is centre-cropped to that aspect and resized by PIL
    before it becomes float: the fast path for datasets and evaluation. A non-RGB file is refused
    unless ``convert`` (see ``open_image``).
    """
    im = open_image(path, convert=convert)
    if size is None:
        return pil_to_tensor(im)
    return center_crop_resize(im, size)


def save_image(tensor: torch.Tensor, path: str | Path) -> Path:
    """Write ``[3, H, W]`` (or ``[B, 3, H, W]``, tiled in a row) float [0, 1] / uint8 to ``path``.

    The format follows the suffix (PNG recommended: lossless).
    """
    t = validate_images(tensor, "image", batched=False)
    if t.ndim == 4:
        t = torch.cat(list(t), dim=-1)  # [3, H, B*W]
    arr = to_uint8(t.cpu()).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return path


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``folder`` (by suffix, case-insensitive)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


SUBSET_MODES = ("stride", "random")


def select_subset(
    items: Sequence, max_items: int | None, mode: str = "stride", seed: int = 0
) -> tuple[list, str]:
    """At most ``max_items`` of ``items``, spread over the whole list -> ``(subset, description)``.

    Never the first N: sorted folders are often sorted by class, so a prefix is one class.
    ``mode="stride"`` takes items ``floor(i * N / n)`` (evenly strided, deterministic);
    ``mode="random"`` a seeded random sample without replacement. Both keep the original order.
    ``description`` says which subset was taken, for the eval output.
    """
    if mode not in SUBSET_MODES:
        raise ValueError(f"subset mode must be one of {SUBSET_MODES}; got {mode!r}")
    items, n_all = list(items), len(items)
    if max_items is None or max_items >= n_all:
        return items, f"all {n_all}"
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1; got {max_items}")
    if mode == "stride":
        idx = [i * n_all // max_items for i in range(max_items)]
        desc = f"{max_items} of {n_all}, evenly strided (every {n_all / max_items:.3g}th in order)"
    else:
        rng = np.random.default_rng(seed)
        idx = sorted(int(i) for i in rng.choice(n_all, max_items, replace=False))
        desc = f"{max_items} of {n_all}, seeded random sample (seed {seed})"
    return [items[i] for i in idx], desc


def iter_image_batches(
    paths: Sequence[str | Path], size: int | Sequence[int], batch_size: int = 32
) -> Iterator[torch.Tensor]:
    """Load, centre-crop and resize ``paths`` -> float batches ``[b, 3, H, W]`` in [0, 1].

    Decoding and resizing happen in PIL on uint8 (``load_image(path, size)``); non-RGB files in
    the folder are converted (logged).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    batch = []
    for p in paths:
        batch.append(load_image(p, size, convert=True))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def image_batches(
    images: torch.Tensor | Iterable[Any], batch_size: int
) -> Iterator[torch.Tensor]:
    """The one image batcher: a ``[N, 3, H, W]`` tensor in slices of ``batch_size``, or the
    batches of an iterable as they come (``(images, labels)`` pairs from a DataLoader unwrapped)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    if isinstance(images, torch.Tensor):
        for i in range(0, images.shape[0], batch_size):
            yield images[i : i + batch_size]
        return
    for b in images:
        yield b[0] if isinstance(b, (tuple, list)) else b


def image_hw(img: torch.Tensor | Image.Image) -> tuple[int, int]:
    """``(H, W)`` of a ``PIL.Image`` or an image tensor ``[..., H, W]``."""
    return (img.height, img.width) if isinstance(img, Image.Image) else tuple(img.shape[-2:])


def crop_resize(
    img: torch.Tensor | Image.Image,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
) -> torch.Tensor | Image.Image:
    """Crop ``box = (top, left, h, w)`` and resize it to ``size = (H, W)``; same type as ``img``.

    The resize is antialiased bicubic: PIL's ``BICUBIC`` on a ``PIL.Image`` (uint8), or
    ``F.interpolate(bicubic, antialias=True)`` on a float tensor ``[..., H, W]``; the two use the
    same kernel and agree to uint8 rounding. No resampling when the crop already has ``size``.
    """
    top, left, ch, cw = box
    th, tw = size
    if isinstance(img, Image.Image):
        if (top, left, ch, cw) != (0, 0, img.height, img.width):
            # crop first: resize(box=...) would also read pixels outside the box at its edges
            img = img.crop((left, top, left + cw, top + ch))
        return img if (ch, cw) == (th, tw) else img.resize((tw, th), Image.Resampling.BICUBIC)
    x = img[..., top : top + ch, left : left + cw]
    if (ch, cw) != (th, tw):
        lead = x.shape[:-3]
        x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(th, tw), mode="bicubic",
                          align_corners=False, antialias=True).reshape(*lead, -1, th, tw)
    return x


def center_crop_resize(
    img: torch.Tensor | Image.Image, size: int | Sequence[int]
) -> torch.Tensor:
    """Centre-crop ``[3, H, W]`` / ``[B, 3, H, W]`` (or a ``PIL.Image``) to the target aspect, then
    resize (antialiased bicubic, see ``crop_resize``).

    ``size`` is an int (square) or ``(H, W)``. Returns float in [0, 1] (uint8 is converted). A
    ``PIL.Image`` is cropped and resized by PIL before it becomes float: much faster on large files.
    """
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if th < 1 or tw < 1:
        raise ValueError(f"size must be positive; got {size}")
    pil = isinstance(img, Image.Image)
    if pil:
        x = img if img.mode == "RGB" else _to_rgb(img, "image")
    else:
        t = validate_images(img, "img", batched=False)
        x = to_float(t).float()
    h, w = image_hw(x)
    # largest crop with the target aspect ratio, centred
    if h * tw > w * th:
        ch, cw = max(1, round(w * th / tw)), w
    else:
        ch, cw = h, max(1, round(h * tw / th))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = crop_resize(x, (top, left, ch, cw), (th, tw))
    if pil:
        return pil_to_tensor(x)
    return x.clamp(0, 1)  # a new tensor: the input is never modified in place


def save_grid(
    rows: list[torch.Tensor],
    path: str | Path,
    labels: Sequence[str] | None = None,
    padding: int = 2,
) -> Path:
    """Save a grid: one row per tensor ``[B, 3, H, W]`` (e.g. originals above reconstructions).

    Rows may differ in size (they are resized to the first row's ``H, W``) but not in ``B``.
    Labels, if given, are drawn at the left of each row.
    """
    if not rows:
        raise ValueError("save_grid needs at least one row [B, 3, H, W]")
    rows = [validate_images(r, f"rows[{i}]", batched=False) for i, r in enumerate(rows)]
    if any(r.ndim != 4 for r in rows):
        raise ValueError("each row must be a batch [B, 3, H, W]")
    b = rows[0].shape[0]
    if any(r.shape[0] != b for r in rows):
        sizes = [r.shape[0] for r in rows]
        raise ValueError(f"all rows must have the same batch size; got {sizes}")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"labels must have one entry per row ({len(rows)}); got {len(labels)}")
    h, w = rows[0].shape[-2:]
    cells = []
    for r in rows:
        r = r.detach().cpu()
        r = to_float(r).float().clamp(0, 1)
        if r.shape[-2:] != (h, w):
            r = F.interpolate(r, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        cells.append(r)
    label_w = 0 if labels is None else 8 + 7 * max(len(s) for s in labels)
    grid_h = len(rows) * (h + padding) + padding
    grid_w = label_w + b * (w + padding) + padding
    canvas = torch.ones(3, grid_h, grid_w)
    for i, r in enumerate(cells):
        y = padding + i * (h + padding)
        for j in range(b):
            x = label_w + padding + j * (w + padding)
            canvas[:, y : y + h, x : x + w] = r[j]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(to_uint8(canvas).permute(1, 2, 0).numpy())
    if labels is not None:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(pil)
        for i, s in enumerate(labels):
            draw.text((4, padding + i * (h + padding) + h // 2 - 5), str(s), fill=(0, 0, 0))
    pil.save(path)
    return path
