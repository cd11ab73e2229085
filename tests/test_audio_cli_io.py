"""Audio I/O, metrics and the CLI on audio files (a tiny EnCodec-architecture checkpoint)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import shared_path

from visualtok.audio import read_audio, resample, to_channels, write_audio
from visualtok.cli import main
from visualtok.metrics.audio import UNAVAILABLE, mel_distance, si_sdr, stft_distance
from visualtok.registry import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(n_filters=4, ratios=(8, 5), dimension=8, lstm_layers=1,
            quantizer=dict(type="rvq", dim=8, codebook_size=32, num_quantizers=4, ema=True),
            codebook_size=32)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("encodec_24khz", **TINY).eval()
    with torch.no_grad():
        for lv in model.quantizer.levels:
            lv.embedding.weight.normal_(0, 0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "encodec_tiny")


def test_read_write_formats_and_channels(tmp_path):
    flac = shared_path("data", "audio", "misc", "jfk.flac")
    wav, sr = read_audio(flac)
    assert sr == 44100 and wav.ndim == 2 and wav.dtype == torch.float32
    ogg, sr2 = read_audio(shared_path("data", "audio", "librispeech_samples",
                                      "198-209-0000.ogg"), sample_rate=8000, channels=2)
    assert sr2 == 8000 and ogg.shape[0] == 2 and torch.equal(ogg[0], ogg[1])
    mp3, sr4 = read_audio(shared_path("data", "audio", "misc", "mdn_t-rex-roar.mp3"), channels=1)
    assert sr4 == 44100 and mp3.shape[0] == 1 and mp3.abs().max() <= 1.0
    x = 0.5 * torch.sin(torch.linspace(0, 800 * math.pi, 16000))[None].repeat(2, 1)
    for suffix in (".wav", ".flac"):
        p = write_audio(tmp_path / f"x{suffix}", x, 16000)
        y, sr3 = read_audio(p)
        assert sr3 == 16000 and y.shape == x.shape
        assert (y - x).abs().max() < 1e-4  # 16-bit PCM
    assert to_channels(x, 1).shape == (1, 16000)
    with pytest.raises(ValueError, match="cannot convert 2-channel audio to 3"):
        to_channels(x, 3)
    assert resample(x, 16000, 8000).shape[-1] == 8000
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable audio file"):
        read_audio(tmp_path / "empty.wav")
    write_audio(tmp_path / "silence.wav", torch.zeros(1, 0), 8000)
    with pytest.raises(ValueError, match="no audio samples"):
        read_audio(tmp_path / "silence.wav")
    with pytest.raises(FileNotFoundError):
        read_audio(tmp_path / "missing.wav")


def test_metrics_behave():
    torch.manual_seed(0)
    ref = 0.3 * torch.randn(2, 1, 8000)
    assert torch.all(si_sdr(2.0 * ref, ref) > 60)  # scale-invariant
    noisy = ref + 0.03 * torch.randn_like(ref)
    torch.testing.assert_close(si_sdr(noisy, ref), torch.full((2,), 20.0), atol=0.5, rtol=0)
    assert torch.all(mel_distance(ref, ref, 16000) == 0)
    worse = ref + 0.3 * torch.randn_like(ref)
    assert torch.all(mel_distance(worse, ref, 16000) > mel_distance(noisy, ref, 16000))
    assert torch.all(stft_distance(worse, ref) > stft_distance(noisy, ref))
    assert set(UNAVAILABLE) == {"utmos", "speaker_similarity", "wer"}


def test_cli_audio_encode_decode_reconstruct(tiny_dir, tmp_path, capsys):
    speech = shared_path("data", "audio", "fsdd", "recordings", "3_jackson_0.wav")  # 8 kHz
    codes = tmp_path / "codes.safetensors"
    assert main(["encode", str(speech), "--model", str(tiny_dir), "--out", str(codes),
                 "--n-q", "2"]) == 0
    assert "2 codebooks" in capsys.readouterr().out
    out_wav = tmp_path / "speech.wav"
    assert main(["decode", str(codes), "--out", str(out_wav)]) == 0
    decoded, sr = read_audio(out_wav)
    original, _ = read_audio(speech, sample_rate=24000)
    assert sr == 24000 and decoded.shape == original.shape
    assert main(["reconstruct", str(speech), "--model", str(tiny_dir), "--out",
                 str(tmp_path / "rec")]) == 0
    printed = capsys.readouterr().out
    # 4 levels x 5 bits x 600 frames/s (hop 40 at 24 kHz)
    for field in ("bitrate     : 12.00 kbps", "SI-SDR", "mel distance"):
        assert field in printed
    assert (tmp_path / "rec" / "3_jackson_0_reconstruction.wav").stat().st_size > 0
    assert (tmp_path / "rec" / "3_jackson_0_spectrogram.png").stat().st_size > 0
    assert main(["encode", str(speech), "--model", str(tiny_dir), "--n-q", "9",
                 "--out", str(codes)]) == 2
    assert "n_q must be an int in [1, 4]" in capsys.readouterr().err
