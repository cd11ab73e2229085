"""Common tests for every registered image tokenizer, built tiny: forward, backward, encode/decode,
save/load round trip (bit-exact), bad input. A new preset gets them for free; presets named
``*tiny*`` run as they are, others need an entry in ``TINY_OVERRIDES`` (glob -> overrides)."""

from __future__ import annotations

import fnmatch
import math

import pytest
import torch

import visualtok
from visualtok import create_model, list_models
from visualtok.image.base import ImageTokenizer
from visualtok.image.flextok import TINY_VAE_CONFIG

_TITOK_TINY = dict(patch_size=16, encoder_width=32, encoder_depth=1, encoder_heads=2,
                   decoder_width=32, decoder_depth=1, decoder_heads=2, image_size=32,
                   num_latent_tokens=8)
TINY_OVERRIDES: dict[str, dict] = {
    # paper checkpoints: the MaskGIT pixel decoder fixes patch 16; 32 channels keep GroupNorm(32)
    "titok_[slb][0-9]*": dict(_TITOK_TINY, pixel_decoder_channels=32,
                              quantizer=dict(type="vq", codebook_size=64, l2_normalize=True)),
    "titok_*_vq8k": dict(_TITOK_TINY, quantizer=dict(type="vq", codebook_size=64, dim=16)),
    "titok_*_vae_c16": dict(_TITOK_TINY, token_size=4, quantizer=dict(type="ptq", bins=8, dim=4)),
    "titok_photo128*": dict(_TITOK_TINY, patch_size=8, quantizer=dict(
        type="vq", codebook_size=16, l2_normalize=True, kmeans_init=True, dead_code_threshold=0.1)),
    "vqgan_*": dict(image_size=32, channels=32, num_res_blocks=1, z_channels=32,
                         quantizer=dict(type="vq", codebook_size=64, l2_normalize=True)),
    "retok_*": dict(image_size=32, channels=32, encoder_ch_mult=(1, 1, 2, 2),
                        decoder_ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32,
                        encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32,
                        decoder_depth=1, decoder_heads=2, num_latent_tokens=16, redundant_from=4,
                        distill_depth=1, distill_dim=16,
                        quantizer=dict(type="vq", codebook_size=64, l2_normalize=True,
                                       rotation_trick=True)),
    # tiny f8 VAE; zero_init off so that gradients reach the encoder at step 0 (the official
    # zero-initialised heads and adaLN block them until the first update)
    "flextok_*": dict(image_size=32, vae=TINY_VAE_CONFIG, num_registers=8, posemb_grid=2,
                      encoder_dim=32, encoder_depth=1, decoder_dim=32, decoder_depth=1,
                      head_dim=32, steps=2, zero_init=False),
}


def _tiny(name: str) -> ImageTokenizer:
    for pattern, overrides in TINY_OVERRIDES.items():
        if fnmatch.fnmatch(name, pattern):
            return create_model(name, **overrides)
    if "tiny" in name:
        return create_model(name)
    pytest.skip(f"no tiny overrides for {name!r}: add it to TINY_OVERRIDES in {__file__}")


MODELS = list_models(task="image-tokenizer")


@pytest.fixture(params=MODELS)
def model(request) -> ImageTokenizer:
    m = _tiny(request.param)
    assert isinstance(m, ImageTokenizer)
    return m


def _images(model: ImageTokenizer, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, *model.image_size)


def test_forward_backward(model):
    model.train()
    x = _images(model)
    out = model(x)
    assert out.recon.shape == x.shape
    assert "total" in out.quant.losses and torch.isfinite(out.quant.losses["total"])
    loss = (out.recon - x).pow(2).mean() + out.quant.losses["total"]
    loss.backward()
    # gradients reach both ends: the first encoder weights and the last decoder layer
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert model.last_layer_weight().grad.abs().sum() > 0


def test_encode_decode_shapes(model):
    model.eval()
    x = _images(model)
    codes = model.encode(x)
    assert codes.dtype == torch.int64
    assert codes.shape == (2, *model.token_shape, model.code_layout.num_factors)
    tokens = codes[0, ..., 0].numel()  # what encode really returned, not the property's formula
    assert model.num_tokens == tokens
    bits = tokens * sum(math.log2(r) for r in model.code_layout.radices)
    assert model.bits_per_image == pytest.approx(bits)
    y = model.decode(codes)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    # uint8 input is accepted and means the same images
    x8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(model.encode(x8), model.encode(x8.float() / 255))
    assert torch.equal(model.reconstruct(x), y)


def test_save_load_roundtrip_bit_exact(model, tmp_path):
    model.eval()
    x = _images(model)
    path = model.save_pretrained(tmp_path / "ckpt")
    loaded = visualtok.load(path)
    assert type(loaded) is type(model)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_bad_input(model):
    model.eval()
    h, w = model.image_size
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode(torch.rand(3, h, w))
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.rand(1, 4, h, w))
    if model.size_multiple is None:  # fixed input size
        with pytest.raises(ValueError, match=f"{h}x{w}"):
            model.encode(torch.rand(1, 3, h + 16, w))
    else:  # fully convolutional: any multiple of the downsampling factor
        with pytest.raises(ValueError, match="divisible by the downsampling factor"):
            model.encode(torch.rand(1, 3, h + model.size_multiple // 2, w))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(torch.rand(1, 3, h, w) * 2 - 1)
    with pytest.raises(TypeError, match="uint8"):
        model.encode(torch.zeros(1, 3, h, w, dtype=torch.int32))
    codes = model.encode(_images(model, 1))
    bad = codes.clone()
    bad.view(-1)[0] = model.code_layout.radices[0]  # one past the largest code of factor 0
    with pytest.raises(ValueError):
        model.decode(bad)
    with pytest.raises(ValueError, match="codes must be"):
        model.decode(codes[..., None])
