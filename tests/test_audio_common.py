"""Common tests for every audio-codec preset (``list_models(task="audio-codec")``), at tiny sizes:
encode/decode shapes and bitrate, prefix decoding, a training step, save/load bit-exact, bad input.
A new codec preset gets them for free; its family only needs a tiny override below."""

from __future__ import annotations

import pytest
import torch

import visualtok
from visualtok.audio import AudioCodec
from visualtok.registry import create_model, list_models

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "encodec": dict(n_filters=4, ratios=(8, 5), dimension=8, lstm_layers=1, codebook_size=16,
                    quantizer=dict(type="rvq", dim=8, codebook_size=16, num_quantizers=3,
                                   ema=True, beta=1.0)),
    "dac": dict(encoder_dim=4, encoder_rates=(2, 4), decoder_dim=16, decoder_rates=(4, 2),
                n_codebooks=3, codebook_size=16, codebook_dim=4, latent_dim=None),
    "codec": dict(encoder_dim=4, ratios=(2, 4), decoder_dim=16, latent_dim=8, dilations=(1,),
                  n_codebooks=3, codebook_size=16, codebook_dim=4),
}
CODECS = list_models(task="audio-codec")


def tiny(name: str) -> AudioCodec:
    torch.manual_seed(0)
    return create_model(name, **TINY[name.split("_")[0]]).eval()


def speech_like(model: AudioCodec, seconds: float = 0.3) -> torch.Tensor:
    n = int(seconds * model.sample_rate)
    t = torch.arange(n) / model.sample_rate
    wav = 0.4 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t)
    return wav.expand(1, model.channels, n).clone()


def test_every_family_has_a_tiny_override():
    assert CODECS and {n.split("_")[0] for n in CODECS} <= set(TINY)


@pytest.mark.parametrize("name", CODECS)
def test_encode_decode_prefix_and_bitrate(name):
    m = tiny(name)
    wav = speech_like(m)
    codes = m.encode(wav, m.sample_rate)
    assert codes.codes.shape == (1, m.num_frames(wav.shape[-1]), m.max_codebooks)
    assert codes.codes.dtype == torch.long and int(codes.codes.max()) < m.codebook_size
    out = m.decode(codes)
    assert out.shape[:2] == (1, m.channels) and out.shape[-1] <= wav.shape[-1]
    assert torch.isfinite(out).all()
    one = m.encode(wav, m.sample_rate, n_q=1)
    assert torch.equal(one.codes, codes.codes[..., :1])
    assert m.decode(one).shape == out.shape
    assert m.bitrate(1) * m.max_codebooks == pytest.approx(m.bitrate())


@pytest.mark.parametrize("name", CODECS)
def test_training_step(name):
    m = tiny(name).train()
    wav = speech_like(m, 0.1).repeat(2, 1, 1)
    recon, quant = m(wav)
    assert recon.shape == wav.shape
    loss = (recon - wav).abs().mean() + quant.losses["total"]
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", CODECS)
def test_save_load_round_trip_and_errors(name, tmp_path):
    m = tiny(name)
    wav = speech_like(m)
    codes = m.encode(wav, m.sample_rate)
    again = visualtok.load(m.save_pretrained(tmp_path / name))
    assert type(again) is type(m)
    assert torch.equal(again.encode(wav, m.sample_rate).codes, codes.codes)
    assert torch.equal(again.decode(codes), m.decode(codes))
    with pytest.raises(ValueError, match="wrong sample rate"):
        m.encode(wav, m.sample_rate + 1)
    with pytest.raises(ValueError, match="too many channels"):
        m.encode(wav.repeat(1, 3, 1), m.sample_rate)
    with pytest.raises(ValueError, match="NaN"):
        m.encode(wav * float("nan"), m.sample_rate)
    with pytest.raises(ValueError, match="empty"):
        m.encode(wav[..., :0], m.sample_rate)
    with pytest.raises(ValueError, match="out of range"):
        m.decode(codes.codes + m.codebook_size)
    with pytest.raises(ValueError, match="n_q"):
        m.encode(wav, m.sample_rate, n_q=m.max_codebooks + 1)
