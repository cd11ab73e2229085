"""The generator over both CNN code layouts: the VQGAN's 2D grid (raster order) and ReTok's 1D
prefix codes: GPT loss falls on real-photo codes, sampling decodes to images (ReTok: any prefix)."""

from __future__ import annotations

import pytest
import torch

import visualtok
from visualtok.generate.pipeline import generate_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["vqgan_tiny", "retok_tiny"])
def test_gpt_learns_and_samples_cnn_codes(name, real_photos):
    tok = visualtok.create_model(name, image_size=32).eval()
    images = torch.nn.functional.interpolate(real_photos, size=(32, 32), mode="area")
    codes = tok.encode(images)  # vqgan: [4, 4, 4, 1] grid; retok: [4, 56, 1]
    n = tok.num_tokens
    gpt = visualtok.create_model("gpt_tiny", num_tokens=n, num_classes=2, class_dropout=0.0)
    labels = torch.tensor([0, 0, 1, 1])
    opt = torch.optim.Adam(gpt.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = gpt(codes.reshape(4, n, 1), labels).loss  # raster order for the 2D grid
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    gpt.eval()
    g = torch.Generator().manual_seed(0)
    out = generate_images(gpt, tok, labels=torch.tensor([0, 1]), generator=g)
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    if tok.supports_prefix:  # ReTok decodes a 5-token prefix
        out = generate_images(gpt, tok, labels=torch.tensor([1]), num_tokens=5, generator=g)
        assert out.shape == (1, 3, 32, 32)
    else:
        with pytest.raises(ValueError, match="does not decode a prefix"):
            generate_images(gpt, tok, labels=torch.tensor([1]), num_tokens=5, generator=g)
