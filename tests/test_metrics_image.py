"""PSNR / SSIM against scikit-image, LPIPS refusal and weight loading, code statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from visualtok.metrics.image import LPIPS, MetricUnavailable, code_statistics, lpips, psnr, ssim
from visualtok.quantize.config import QuantizerConfig, build_quantizer


@pytest.fixture(scope="module")
def degraded(real_photos):
    g = torch.Generator().manual_seed(0)
    noisy = (real_photos + 0.05 * torch.randn(real_photos.shape, generator=g)).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(real_photos, 3, 1, 1)
    return noisy, blurred


def test_psnr_matches_skimage(real_photos, degraded):
    for other in degraded:
        ours = psnr(real_photos, other)
        ref = [peak_signal_noise_ratio(a.double().numpy(), b.double().numpy(), data_range=1.0)
               for a, b in zip(real_photos, other)]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)
    assert psnr(real_photos, real_photos).min() > 90  # identical: capped, not inf


def test_ssim_matches_skimage(real_photos, degraded):
    for other in degraded:
        ours = ssim(real_photos, other)
        ref = [structural_similarity(a.double().numpy(), b.double().numpy(), channel_axis=0,
                                     gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0)
               for a, b in zip(real_photos, other)]
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    assert torch.allclose(ssim(real_photos, real_photos), torch.ones(4))
    u8 = (real_photos * 255).round().to(torch.uint8)
    assert torch.allclose(ssim(u8, real_photos), torch.ones(4), atol=1e-3)


def test_bad_input(real_photos):
    with pytest.raises(ValueError, match="same shape"):
        psnr(real_photos, real_photos[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssim(real_photos * 255, real_photos * 255)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        psnr(real_photos[0], real_photos[0])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(real_photos[..., :8, :8], real_photos[..., :8, :8])


def test_lpips_refuses_without_weights(real_photos):
    with pytest.raises(MetricUnavailable, match="NOT computed"):
        lpips(real_photos, real_photos)


def test_lpips_loads_a_weights_file(tmp_path, real_photos):
    """Weight layout and mechanics only (random weights: values are meaningless)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    feats = make_layers(cfgs["D"])[:30].state_dict()  # same keys as vgg16().features
    sd = {f"features.{k}": v for k, v in feats.items()}
    for k, c in enumerate((64, 128, 256, 512, 512)):
        sd[f"lin{k}.weight"] = torch.rand(1, c, 1, 1)
    torch.save(sd, tmp_path / "lpips_vgg.pt")
    x = torch.nn.functional.interpolate(real_photos[:2], size=32)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    d_noisy = lpips(x, y, weights=tmp_path / "lpips_vgg.pt")
    d_same = LPIPS(tmp_path / "lpips_vgg.pt")(x, x)
    assert d_same.shape == (2,) and torch.allclose(d_same, torch.zeros(2))
    assert (d_noisy > 0).all()
    del sd["lin3.weight"]
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="lins.3"):
        LPIPS(tmp_path / "bad.pt")



def test_perceptual_loss_is_the_lpips_metric_with_gradients(tmp_path, real_photos):
    """The training loss shares the metric's network: batch mean of ``LPIPS``, differentiable,
    reading the official ``lin{k}.model.1.weight`` names too."""
    from torchvision.models.vgg import cfgs, make_layers

    from visualtok.train.losses import PerceptualLoss

    torch.manual_seed(0)
    sd = {f"features.{k}": v for k, v in make_layers(cfgs["D"])[:30].state_dict().items()}
    official = dict(sd)
    for k, c in enumerate((64, 128, 256, 512, 512)):
        sd[f"lin{k}.weight"] = torch.rand(1, c, 1, 1)
        official[f"lin{k}.model.1.weight"] = sd[f"lin{k}.weight"]
    torch.save(sd, tmp_path / "lpips_vgg.pt")
    torch.save(official, tmp_path / "lpips_official.pt")
    x = torch.nn.functional.interpolate(real_photos[:2], size=32)
    recon = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)  # unclamped, as in training
    loss = PerceptualLoss(tmp_path / "lpips_official.pt")(recon, x)
    loss.backward()
    metric = LPIPS(tmp_path / "lpips_vgg.pt")(recon.detach().clamp(0, 1), x)
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert loss.item() > 0 and metric.shape == (2,)
    clamped = PerceptualLoss(tmp_path / "lpips_vgg.pt")(recon.detach().clamp(0, 1), x)
    assert torch.allclose(clamped, metric.mean(), rtol=1e-5, atol=1e-7)

def test_code_statistics():
    q = build_quantizer(QuantizerConfig(type="fsq", dim=4, levels=(8, 5, 5, 5))).eval()
    codes = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(5), indexing="ij"), -1)
    codes = torch.cat([codes, torch.zeros_like(codes)], -1).view(2, 20, 4)  # 40 tokens, 2 images
    rep = code_statistics(q, codes)
    assert rep["tokens_per_image"] == 20 and rep["num_images"] == 2
    assert rep["bits_per_token"] == pytest.approx(math.log2(1000))
    assert rep["bits_per_image"] == pytest.approx(20 * math.log2(1000))
    assert rep["factors"][0]["used"] == 8 and rep["factors"][2]["used"] == 1
    assert rep["entropy_bits_per_token"] == pytest.approx(3 + math.log2(5))
    assert rep["perplexity"] == pytest.approx(40.0)
    import json

    json.dumps(rep)  # JSON-ready (no tensors)
