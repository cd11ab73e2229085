"""TokenBridge end to end at tiny scale: a continuous TiTok (VAE mode) + post-training
dimension-wise quantization (16 channels x 64 bins = 2^96 codes) + a per-factor-head GPT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visualtok
from visualtok.generate.pipeline import generate_images
from visualtok.generate.tokenbridge import (
    calibrate_tokenizer,
    continuous_latents,
    tokenbridge_gpt,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_tokens(real_photos):
    x = torch.nn.functional.interpolate(real_photos, size=(64, 64), mode="area")
    x = torch.cat([x, x.flip(-1)])
    tok = visualtok.create_model(
        "titok_tiny",
        mode="vae",
        token_size=16,
        quantizer={"type": "ptq", "bins": 64, "dim": 16, "per_channel": True},
    ).eval()
    calibrate_tokenizer(tok, [x[:4], x[4:]])
    return tok, x


def test_post_training_quantization_of_the_continuous_latents(vae_tokens):
    tok, x = vae_tokens
    assert tok.code_layout.radices == (64,) * 16 and tok.code_layout.flat_vocab is None
    z = continuous_latents(tok, x)
    codes = tok.encode(x)
    assert codes.shape == (8, 32, 16)
    usage = tok.quantizer.usage(codes)["usage"]
    assert usage > 0.3  # calibrated ranges spread the latents over the bins
    z_q = tok.quantizer.decode(codes)
    err = (z_q - z).abs() / z.std(dim=(0, 1))
    assert err.mean() < 0.1  # 64 Gaussian-quantile bins: a small fraction of a sigma
    with pytest.raises(ValueError, match="continuous tokenizer"):
        tokenbridge_gpt(visualtok.create_model("titok_tiny"))


def test_per_factor_gpt_trains_and_samples_images(vae_tokens):
    tok, x = vae_tokens
    codes, labels = tok.encode(x)[:, :8], torch.zeros(8, dtype=torch.long)  # 8-token prefixes
    finals, models = {}, {}
    for head in ("factor", "factor_independent"):
        torch.manual_seed(0)
        gpt = tokenbridge_gpt(tok, num_classes=1, head=head)
        assert gpt.head_type == head and gpt.config.num_tokens == 32
        opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
        losses = []
        for _ in range(40):
            loss = gpt(codes, labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(16 * np.log(64), rel=1e-4)  # zero-initialised head
        finals[head], models[head] = float(np.mean(losses[-5:])), gpt
        assert finals[head] < 0.25 * losses[0]
    # channels of one token are correlated: conditioning on earlier channels fits them better
    assert finals["factor"] < finals["factor_independent"]

    gpt = models["factor"].eval()  # sample a prefix, decode it with the continuous decoder
    imgs = generate_images(
        gpt,
        tok,
        torch.tensor([0, 0]),
        num_tokens=8,
        generator=torch.Generator().manual_seed(0),
        cfg_scale=1.5,
    )
    assert imgs.shape == (2, 3, 64, 64) and 0 <= imgs.min() and imgs.max() <= 1
