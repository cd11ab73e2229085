"""visualtok.data.image_io: load/save round trips, explicit mode conversion, crops, grids."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from visualtok.data.image_io import (
    center_crop_resize,
    iter_image_batches,
    list_images,
    load_image,
    open_image,
    save_grid,
    save_image,
    to_uint8,
)


def test_to_uint8_rounds_not_floors():
    x = torch.tensor([0.0, 0.499 / 255, 0.501 / 255, 254.6 / 255, 1.0, 1.2, -0.1])
    assert to_uint8(x).tolist() == [0, 0, 1, 255, 255, 255, 0]


def test_png_round_trip_is_exact(tmp_path, real_photos):
    img = real_photos[0]
    p = save_image(img, tmp_path / "a.png")
    back = load_image(p)
    assert back.shape == img.shape and back.dtype == torch.float32
    assert torch.equal(to_uint8(back), to_uint8(img))
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6


def test_batch_is_saved_as_row(tmp_path, real_photos):
    p = save_image(real_photos[:3], tmp_path / "row.png")
    assert load_image(p).shape == (3, 128, 3 * 128)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("LA", 2), ("RGBA", 4), ("CMYK", 4), ("P", 1)])
def test_non_rgb_files_are_refused_unless_converted(tmp_path, mode, channels):
    arr = np.full((6, 5, channels), 7, np.uint8).squeeze(-1) if channels == 1 else \
        np.full((6, 5, channels), 7, np.uint8)
    path = tmp_path / f"pic_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.fromarray(arr, mode=mode).save(path)
    for load in (lambda **kw: load_image(path, **kw), lambda **kw: open_image(path, **kw)):
        with pytest.raises(ValueError, match=rf"pic_{mode}.*'{mode}' image, not RGB"):
            load()
        out = load(convert=True)
        assert (out.mode if isinstance(out, Image.Image) else out.shape[0]) in ("RGB", 3)


def test_grayscale_and_rgba_converted_with_log(tmp_path, caplog):
    Image.fromarray(np.full((5, 7), 100, np.uint8), mode="L").save(tmp_path / "g.png")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 0  # fully transparent red -> white
    rgba[0, 0, 3] = 255  # one opaque red pixel
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    with caplog.at_level(logging.INFO, logger="visualtok.data.image_io"):
        g = load_image(tmp_path / "g.png", convert=True)
        t = load_image(tmp_path / "t.png", convert=True)
    assert g.shape == (3, 5, 7) and torch.allclose(g, torch.full_like(g, 100 / 255))
    assert t.shape == (3, 4, 4)
    assert t[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(t[:, 1, 1], torch.ones(3))
    assert "g.png" in caplog.text and "t.png" in caplog.text


def test_list_images_sorted_and_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.png"]
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["a.JPG", "b.png"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_center_crop_resize_takes_centre():
    img = torch.zeros(3, 40, 100)
    img[:, :, 30:70] = 1.0  # a centred 40x40 white square in a wide black image
    out = center_crop_resize(img, 20)
    assert out.shape == (3, 20, 20)
    assert out.min() > 0.99
    out2 = center_crop_resize(torch.rand(2, 3, 50, 60), (32, 16))
    assert out2.shape == (2, 3, 32, 16)
    u8 = center_crop_resize(torch.full((3, 8, 8), 255, dtype=torch.uint8), 8)
    assert u8.dtype == torch.float32 and torch.equal(u8, torch.ones(3, 8, 8))


def test_save_grid_layout(tmp_path, real_photos):
    small = torch.nn.functional.interpolate(real_photos, size=64)
    p = save_grid([real_photos, small], tmp_path / "grid.png", labels=["orig", "recon"])
    g = load_image(p)
    assert g.shape[1] == 2 * (128 + 2) + 2
    with pytest.raises(ValueError, match="same batch size"):
        save_grid([real_photos, real_photos[:2]], tmp_path / "bad.png")


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        save_image(torch.rand(4, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        save_image(torch.rand(3, 8, 8) * 255, tmp_path / "x.png")
    with pytest.raises(TypeError, match="uint8"):
        save_image(torch.ones(3, 8, 8, dtype=torch.int32), tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")


def test_iter_image_batches(tmp_path, real_photos):
    paths = [save_image(real_photos[i, :, :, : 100 + 8 * i], tmp_path / f"{i}.png")
             for i in range(4)]
    batches = list(iter_image_batches(paths, 32, batch_size=3))
    assert [b.shape for b in batches] == [(3, 3, 32, 32), (1, 3, 32, 32)]
    assert torch.equal(batches[1][0], load_image(paths[3], 32))  # the PIL fast path
    float_path = center_crop_resize(load_image(paths[3]), 32)  # torch bicubic on float
    assert (batches[1][0] - float_path).abs().mean() < 0.5 / 255


def test_make_patches_reads_non_rgb_photos_through_the_library_loader(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from train.make_patches import make_patches

    src = tmp_path / "src"
    (src / "set").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # transparent: composited on white, like every library loader
    Image.fromarray(rgba, mode="RGBA").save(src / "set" / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), mode="L").save(src / "b.png")
    n = make_patches(src, tmp_path / "out", size=32, scales=[1.0], stride=16, exclude=[],
                     min_std=0.0)
    crops = sorted((tmp_path / "out").rglob("*.jpg"))
    assert n == len(crops) == 2 * 2  # two 32x32 crops along the width of each 40x50 photo
    white = [c for c in crops if c.name.startswith("set__a")]
    assert white and np.asarray(Image.open(white[0])).min() > 240
    assert all(Image.open(c).mode == "RGB" for c in crops)
