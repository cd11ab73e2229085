"""visualtok's own codec (visualtok/audio/codec.py): presets, exact streaming on real speech, clear
errors, save/load."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path

from visualtok import create_model, list_models
from visualtok.audio import AudioCodes
from visualtok.audio.codec import CODEC_PRESETS, CodecConfig, StreamingDecoder, StreamingEncoder
from visualtok.audio.io import read_audio


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Streaming runs many small convs: on a shared 2-core machine intra-op threads only spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def speech():
    """3 s of real LibriSpeech speech at 16 kHz, [1, 1, T] (starts 1 s in: no leading silence)."""
    wav, sr = read_audio(shared_path("data", "audio", "librispeech_samples", "198-209-0000.ogg"))
    assert sr == 16000
    return wav[None, :1, 16000 : 16000 * 4].contiguous()


def _random_chunks(total: int, gen: torch.Generator, hi: int) -> list[int]:
    """Chunk sizes covering ``total``: many of 1 sample, many below the hop, some over it."""
    sizes, used = [], 0
    while used < total:
        r = float(torch.rand((), generator=gen))
        n = 1 if r < 0.25 else int(torch.randint(2, hi, (), generator=gen))
        n = min(n, total - used)
        sizes.append(n)
        used += n
    return sizes


def test_presets_bitrates_and_prefix_decode():
    assert {"codec_tiny", "codec_small", "codec_lm"} <= set(list_models(task="audio-codec"))
    small, lm = (CodecConfig(**CODEC_PRESETS[n]).validate() for n in ("codec_small", "codec_lm"))
    assert (small.sample_rate, small.hop_length, small.n_codebooks, small.codebook_size) == (
        16000, 320, 8, 1024)  # 50 Hz x 8 x 10 bits = 4 kbps
    assert lm.hop_length == 640 and lm.n_codebooks == 4  # 25 Hz x 4 x 10 bits = 1 kbps
    tiny = create_model("codec_tiny").eval()
    assert tiny.bitrate() == 1600.0 and tiny.frame_rate == 50.0
    wav = torch.sin(torch.linspace(0, 900, 5000))[None, None] * 0.5
    codes = tiny.encode(wav, 16000)
    assert codes.codes.shape == (1, 16, 4) and codes.codes.dtype == torch.int64
    assert torch.equal(tiny.encode(wav, 16000, n_q=2).codes, codes.codes[..., :2])
    assert tiny.decode(codes).shape == (1, 1, 5000)
    assert tiny.decode(codes.codes[..., :1]).shape == (1, 1, 16 * 320)
    with pytest.raises(ValueError, match="activation"):
        create_model("codec_tiny", activation="relu")
    with pytest.raises(ValueError, match="decoder_dim"):
        create_model("codec_tiny", decoder_dim=100)


@pytest.mark.parametrize("overrides", [
    dict(),  # codec_tiny: hop 320, Snake
    dict(ratios=(2, 4, 8, 10), activation="elu"),  # the codec_lm hop (640, 25 Hz), ELU
])
def test_streaming_equals_offline_on_real_speech(speech, overrides):
    torch.manual_seed(0)
    model = create_model("codec_tiny", causal=True, **overrides).eval()
    wav = speech[..., : 16000 * 3 - 123]  # not a whole number of frames: flush pads the last one
    offline = model.encode(wav, 16000)
    gen = torch.Generator().manual_seed(7)
    for _ in range(2):
        enc = StreamingEncoder(model)
        parts, pos = [], 0
        for n in _random_chunks(wav.shape[-1], gen, hi=model.hop_length + 400):
            parts.append(enc(wav[..., pos : pos + n]))
            pos += n
        parts.append(enc.flush())
        assert torch.equal(torch.cat(parts, 1), offline.codes)
    # a prefix of the levels streams to the offline prefix
    enc = model.streaming_encoder(n_q=2)
    head = [enc(wav[..., i : i + 37]) for i in range(0, wav.shape[-1], 37)] + [enc.flush()]
    assert torch.equal(torch.cat(head, 1), offline.codes[..., :2])

    ref = model.decode(offline.codes)  # untrimmed: T_f * hop samples
    dec = StreamingDecoder(model)
    out, f = [], 0
    while f < offline.codes.shape[1]:
        n = int(torch.randint(1, 6, (), generator=gen))
        out.append(dec(offline.codes[:, f : f + n]))
        f += n
    out = torch.cat(out, -1)
    assert out.shape == ref.shape
    assert float(ref.abs().max()) > 1e-4  # a real signal, not silence
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_streaming_a_batch_equals_offline(speech):
    """Two different signals in one stream (the window buffers then hold strided rows)."""
    torch.manual_seed(0)
    model = create_model("codec_tiny", causal=True).eval()
    wav = torch.cat([speech[..., :9000], speech[..., 20000:29000]])  # [2, 1, 9000]
    offline = model.encode(wav, 16000).codes
    enc, gen, parts, pos = model.streaming_encoder(), torch.Generator().manual_seed(3), [], 0
    for n in _random_chunks(wav.shape[-1], gen, hi=700):
        parts.append(enc(wav[..., pos : pos + n]))
        pos += n
    assert torch.equal(torch.cat(parts + [enc.flush()], 1), offline)
    dec = model.streaming_decoder()
    out = torch.cat([dec(offline[:, f : f + 3]) for f in range(0, offline.shape[1], 3)], -1)
    torch.testing.assert_close(out, model.decode(offline), atol=1e-5, rtol=0)


def test_streaming_clear_errors(speech):
    torch.manual_seed(0)
    model = create_model("codec_tiny", causal=True).eval()
    other = create_model("codec_tiny", causal=True).eval()  # other random codebooks
    enc = StreamingEncoder(model)
    with pytest.raises(ValueError, match="channels"):
        enc(speech.repeat(1, 2, 1)[..., :100])
    enc(speech[..., :100])
    with pytest.raises(ValueError, match="batch size"):
        enc(speech.repeat(2, 1, 1)[..., 100:200])
    with pytest.raises(ValueError, match="different model"):
        StreamingEncoder(other, state=enc.state)
    with pytest.raises(ValueError, match="decoder"):
        StreamingDecoder(model, state=enc.state)
    with pytest.raises(ValueError, match="not causal"):
        StreamingEncoder(create_model("codec_tiny"))
    with pytest.raises(TypeError, match="Codec"):
        StreamingEncoder(torch.nn.Linear(2, 2))

    codes = model.encode(speech[..., :3200], 16000)
    with pytest.raises(ValueError, match="another codec"):
        other.decode(codes)
    with pytest.raises(ValueError, match="another codec"):
        StreamingDecoder(other)(codes)
    bare = codes.codes.clone()
    bare[0, 0, 0] = 1023  # from a 1024-entry codebook: out of range for codec_tiny's 256
    with pytest.raises(ValueError, match="out of range"):
        StreamingDecoder(model)(bare)
    dec = StreamingDecoder(model)
    dec(codes.codes[:, :2])
    with pytest.raises(ValueError, match="levels"):
        dec(codes.codes[:, 2:4, :2])
    assert isinstance(codes, AudioCodes) and codes.codec_id == model.codec_id()


def test_save_load_round_trip_keeps_codes(speech, tmp_path):
    import visualtok

    torch.manual_seed(0)
    model = create_model("codec_tiny", causal=True).eval()
    again = visualtok.load(model.save_pretrained(tmp_path / "codec"))
    assert again.config == model.config
    a, b = model.encode(speech, 16000), again.encode(speech, 16000)
    assert torch.equal(a.codes, b.codes)
    torch.testing.assert_close(again.decode(b), model.decode(a), atol=0, rtol=0)


def test_stream_tables_are_laid_out_at_start_and_refused_after_a_weight_change(speech):
    """A stream lays out its kernels and RVQ tables when it starts; once the model's weights
    change (load_state_dict, an in-place write, .to()) the live stream raises instead of mixing
    stale tables into its output, and a new stream uses the new weights."""
    torch.manual_seed(0)
    model = create_model("codec_tiny", causal=True).eval()
    other = create_model("codec_tiny", causal=True).eval()  # other random weights
    wav = speech[..., :3200]
    enc, dec = model.streaming_encoder(), model.streaming_decoder()
    codes = enc(wav[..., :1600])
    audio = dec(codes)
    model.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="weights changed"):
        enc(wav[..., 1600:])
    with pytest.raises(ValueError, match="weights changed"):
        dec(codes)
    with pytest.raises(ValueError, match="weights changed"):
        enc.flush()
    # a new stream computes its tables from the new weights: the new model's offline codes/audio
    fresh, second = model.streaming_encoder(), model.streaming_encoder()
    assert fresh._rvq is not enc._rvq and fresh._plan[0].kernel is not enc._plan[0].kernel
    # streams of one model share the laid-out kernels, not their buffers: interleaved, each
    # gives the offline codes
    assert second._rvq is fresh._rvq and second._plan[0].kernel is fresh._plan[0].kernel
    parts = ([], [])
    for i in range(0, 3200, 800):
        parts[0].append(fresh(wav[..., i : i + 800]))
        parts[1].append(second(wav[..., i // 2 : i // 2 + 400]))
    streamed = torch.cat(parts[0] + [fresh.flush()], 1)
    assert torch.equal(streamed, other.encode(wav, 16000).codes)
    assert torch.equal(torch.cat(parts[1] + [second.flush()], 1),
                       other.encode(wav[..., :1600], 16000).codes)
    assert not torch.equal(streamed[:, :5], codes)  # the old weights gave other codes
    out = model.streaming_decoder()(streamed)
    torch.testing.assert_close(out, other.decode(streamed), atol=1e-5, rtol=0)
    assert float((out[..., :1600] - audio).abs().max()) > 1e-3  # not the old weights' audio
    # an in-place write (an optimiser step) and .to() are seen too
    enc = model.streaming_encoder()
    with torch.no_grad():
        model.quantizer.levels[0].embedding.weight.mul_(1.5)
    with pytest.raises(ValueError, match="weights changed"):
        enc(wav[..., :320])
    dec = model.streaming_decoder()
    model.to(torch.float32)
    with pytest.raises(ValueError, match="start a new StreamingDecoder"):
        dec(streamed)
