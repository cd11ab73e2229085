"""The GPT over audio codec codes [B, T_frames, n_q]: factor head over RVQ levels, MusicGen delay
pattern (exact round trip, forced pads), samples that decode to audio of the requested length,
and the ``visualtok generate`` wav path."""

from __future__ import annotations

import pytest
import torch

from visualtok import create_model
from visualtok.generate.delay import delay_codes, delay_valid, undelay_codes
from visualtok.generate.pipeline import generate_audio


def _codec():
    torch.manual_seed(0)
    return create_model("codec_tiny", causal=True).eval()  # 4 x 256 codes, 50 Hz


def _gpt(codec, **kw):
    torch.manual_seed(1)
    return create_model("gpt_speech", layout=codec.code_layout, num_tokens=40, num_layers=1,
                        dim=64, factor_head_dim=32, **kw).eval()


def test_delay_pattern_round_trip_exact():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 1024, (3, 17, 8), generator=g)
    pads = [1024] * 8
    d = delay_codes(codes, pads)
    assert d.shape == (3, 17 + 7, 8)
    assert torch.equal(undelay_codes(d), codes)
    valid = delay_valid(24, 8, 17)
    assert torch.equal(d[0][~valid], torch.full(((~valid).sum().item(),), 1024))
    assert torch.equal(d[:, 3, 2], codes[:, 1, 2])  # step t holds frame t - k of level k
    with pytest.raises(ValueError, match="one pad per level"):
        delay_codes(codes, [1024] * 7)
    with pytest.raises(ValueError, match="T \\+ K - 1"):
        undelay_codes(d[:, :5])


@pytest.mark.parametrize("delay", [False, True])
def test_speech_gpt_samples_valid_codes_of_requested_length(delay):
    codec = _codec()
    gpt = _gpt(codec, delay_pattern=delay)
    assert gpt.head_type == "factor" and gpt.layout.num_factors == 4
    wav = torch.sin(torch.linspace(0, 3000, 16000))[None, None] * 0.3
    codes = codec.encode(wav, 16000).codes  # [1, 50, 4]
    out = gpt(codes[:, : 40 - gpt.delay_steps])  # the loss runs (delayed: pads included)
    assert out.loss.isfinite()
    g = torch.Generator().manual_seed(0)
    got, audio = generate_audio(gpt, codec, 7, num_samples=2, generator=g, top_k=50)
    assert got.shape == (2, 7, 4) and got.dtype == torch.long
    assert int(got.min()) >= 0 and int(got.max()) < 256  # never a pad, never out of range
    assert audio.shape == (2, 1, 7 * codec.hop_length)
    assert audio.isfinite().all()
    # cached and uncached sampling agree exactly
    a = gpt.generate(num_samples=2, num_tokens=3, generator=torch.Generator().manual_seed(3))
    b = gpt.generate(num_samples=2, num_tokens=3, generator=torch.Generator().manual_seed(3),
                     use_cache=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_tokens must be in"):
        gpt.generate(num_samples=1, num_tokens=41 - gpt.delay_steps)


@pytest.mark.slow
def test_delayed_gpt_learns_pads_and_levels():
    """A few steps on one clip's codes lower the delayed NLL (pads and real levels)."""
    codec = _codec()
    gpt = _gpt(codec, delay_pattern=True).train()
    wav = torch.sin(torch.linspace(0, 3000, 16000))[None, None] * 0.3
    codes = codec.encode(wav, 16000).codes[:, :30]
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = gpt(codes).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_speech_gpt_clear_errors():
    codec = _codec()
    with pytest.raises(ValueError, match="delay_pattern needs a causal"):
        create_model("gpt_speech", delay_pattern=True, causal=False)
    gpt = _gpt(create_model("codec_small", causal=True))  # 8 x 1024 layout
    with pytest.raises(ValueError, match="another codec"):
        generate_audio(gpt, codec, 4, num_samples=1)


def test_cli_generate_writes_wavs(tmp_path):
    import soundfile as sf

    from visualtok.cli import main

    codec = _codec()
    gpt = _gpt(codec, delay_pattern=True)
    codec.save_pretrained(tmp_path / "codec")
    gpt.save_pretrained(tmp_path / "gpt")
    rc = main(["generate", "--model", str(tmp_path / "gpt"), "--tokenizer",
               str(tmp_path / "codec"), "--num", "2", "--num-tokens", "5", "--top-k", "20",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    for i in range(2):
        data, sr = sf.read(str(tmp_path / "out" / f"{i:03d}.wav"))
        assert sr == 16000 and data.shape == (5 * 320,)
