"""The shipped weights in weights/: offline loading, held-out quality, prefixes, generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path

import visualtok
from visualtok.data.image_io import center_crop_resize, list_images, load_image
from visualtok.metrics.image import psnr


@pytest.fixture(scope="module")
def kodak() -> torch.Tensor:
    """The 24 Kodak photos (never used in training), centre-cropped and resized to 128x128."""
    files = list_images(shared_path("data", "images", "kodak"))
    return torch.stack([center_crop_resize(load_image(f), (128, 128)) for f in files])


@pytest.fixture(scope="module")
def tokenizer():
    return visualtok.load("titok_photo128")


def block_mean_baseline(images: torch.Tensor, bits: float) -> torch.Tensor:
    """The best of a few block-mean codecs within ``bits`` per image: average-pool to a g x g grid,
    quantize each channel uniformly to b bits, upsample bilinearly."""
    best, best_psnr = None, -math.inf
    for b in range(1, 9):
        g = int(math.sqrt(bits / (3 * b)))
        small = F.adaptive_avg_pool2d(images, g)
        small = (small * (2**b - 1)).round() / (2**b - 1)
        up = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
        p = float(psnr(up, images).mean())
        if p > best_psnr:
            best, best_psnr = up, p
    return best


SHIPPED = ("titok_photo128", "titok_photo128_nested", "gpt_photo128")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_offline_with_checked_hashes(name, monkeypatch, tmp_path):
    import shutil

    from visualtok.hub import CheckpointError, sha256_file, weights_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rec = visualtok.registry.get_model_entry(name).pretrained
    shipped = weights_dir() / name
    # the digest the registry records is the digest of the shipped file, and load() checks it
    assert sha256_file(shipped / rec.filename) == rec.sha256
    assert not visualtok.load(name).training
    # a copy whose weights differ by one byte is refused, naming the file
    bad = tmp_path / "w" / name
    shutil.copytree(shipped, bad)
    raw = bytearray((bad / rec.filename).read_bytes())
    raw[-1] ^= 0x01
    (bad / rec.filename).write_bytes(bytes(raw))
    monkeypatch.setenv("VISUALTOK_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(CheckpointError, match="sha256") as e:
        visualtok.load(name)
    assert rec.filename in str(e.value)


def test_default_tokenizer_beats_block_mean_at_the_same_bits(tokenizer, kodak):
    bits = tokenizer.bits_per_image
    assert bits == 128 * 12
    with torch.no_grad():
        recon = tokenizer.reconstruct(kodak)
    ours = float(psnr(recon, kodak).mean())
    baseline = float(psnr(block_mean_baseline(kodak, bits), kodak).mean())
    assert ours > baseline + 0.5, (ours, baseline)
    assert ours > 20.0


def test_nested_tokenizer_decodes_every_prefix(kodak):
    tok = visualtok.load("titok_photo128_nested")
    with torch.no_grad():
        codes = tok.encode(kodak[:8])
        decoded = [tok.decode(codes[:, :k]) for k in (4, 16, 64, 128)]
    quality = [float(psnr(d, kodak[:8]).mean()) for d in decoded]
    assert all(b > a for a, b in zip(quality, quality[1:])), quality
    assert quality[0] > 14.0  # a 4-token prefix is already a coarse picture, not noise


def test_shipped_generator_samples_decodable_images(tokenizer):
    gpt = visualtok.load("gpt_photo128")
    assert gpt.code_layout.radices == tokenizer.code_layout.radices
    from visualtok.generate.pipeline import generate_images

    g = torch.Generator().manual_seed(0)
    images = generate_images(gpt, tokenizer, labels=torch.tensor([0, 1]), num_tokens=128,
                             generator=g, top_k=200, cfg_scale=2.0)
    assert images.shape == (2, 3, 128, 128)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05


def test_nested_tokenizer_beats_block_mean_at_a_32_token_prefix(kodak):
    """At 32 tokens (384 bits) the nested tokenizer beats block-mean coding at the same bits
    (18.40 vs 18.19 dB). Not yet at 64+ tokens (weights/README.md gives the margins)."""
    tok = visualtok.load("titok_photo128_nested")
    with torch.no_grad():
        recon = tok.decode(tok.encode(kodak)[:, :32])
    ours = float(psnr(recon, kodak).mean())
    baseline = float(psnr(block_mean_baseline(kodak, 32 * 12), kodak).mean())
    assert ours > baseline + 0.1, (ours, baseline)
