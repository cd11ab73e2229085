"""EnCodec parity against the official ``encodec`` package (the oracle), on real speech.

Random-init official models (24 kHz and 48 kHz; every parameter perturbed by ``0.02 * randn`` and
every codebook filled from the data, as a trained one would be, so codes vary and decisions are
far from ties) go through our converter. Codes must be identical at every bandwidth, the decoded
audio equal to ``atol=1e-4``, and a padded batch must give the same codes as one by one.
"""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path

encodec = pytest.importorskip("encodec", reason="the parity oracle: pip install -e '.[oracles]'")

from visualtok.audio import AudioCodes, read_audio  # noqa: E402
from visualtok.convert import convert_checkpoint  # noqa: E402
from visualtok.hub import CheckpointError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def official_model(sample_rate: int, seed: int, wav: torch.Tensor):
    """The official architecture with random weights and data-filled codebooks (eval mode)."""
    torch.manual_seed(seed)
    build = (encodec.EncodecModel.encodec_model_24khz if sample_rate == 24000
             else encodec.EncodecModel.encodec_model_48khz)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's weight_norm deprecation, inside the package
        m = build(pretrained=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        x = wav
        if m.normalize:
            x = x / (1e-8 + x.mean(1, keepdim=True).pow(2).mean(2, keepdim=True).sqrt())
        emb = m.encoder(x)
        res = emb.transpose(1, 2).reshape(-1, emb.shape[1])
        for layer in m.quantizer.vq.layers:
            cb = layer._codebook
            pick = torch.randint(res.shape[0], (cb.codebook_size,), generator=g)
            noise = torch.randn(cb.codebook_size, res.shape[1], generator=g)
            new = 0.5 * res[pick] + res.std(0) * noise
            cb.embed.copy_(new)
            cb.embed_avg.copy_(new)
            cb.inited.fill_(1.0)
            res = res - layer.decode(layer.encode(res.T[None]))[0].T
    return m.eval()


def speech(sample_rate: int, channels: int, seconds: float, name: str = "LJ001-0002.wav"):
    path = shared_path("data", "audio", "ljspeech_subset", name)
    wav, _ = read_audio(path, sample_rate=sample_rate, channels=channels)
    if channels == 2:  # a real stereo difference: the right channel delayed and quieter
        wav = torch.stack([wav[0], 0.7 * torch.roll(wav[1], 40)])
    return wav[:, : int(seconds * sample_rate)][None]


def official_encode_decode(ref, wav, bandwidth):
    ref.set_target_bandwidth(bandwidth)
    with torch.no_grad():
        frames = ref.encode(wav)
        out = ref.decode(frames)[..., : wav.shape[-1]]
    codes = torch.cat([f[0] for f in frames], dim=-1)  # [B, K, T_f]
    scales = torch.cat([f[1] for f in frames], dim=1) if frames[0][1] is not None else None
    return codes, scales, out


def check_parity(sample_rate, seed, bandwidths, seconds):
    channels = 1 if sample_rate == 24000 else 2
    wav = speech(sample_rate, channels, seconds)
    ref = official_model(sample_rate, seed, wav)
    preset = f"encodec_{sample_rate // 1000}khz"
    ours = convert_checkpoint("encodec", ref.state_dict(), config=preset)
    for bw in bandwidths:
        ref_codes, ref_scales, ref_out = official_encode_decode(ref, wav, bw)
        got = ours.encode(wav, sample_rate, n_q=ours.n_q_for_bandwidth(bw))
        assert got.codes.shape[-1] == ref_codes.shape[1]
        assert torch.equal(got.to_official(), ref_codes), f"{preset}, {bw} kbps, seed {seed}"
        if ref_scales is not None:
            torch.testing.assert_close(got.scales, ref_scales, rtol=0, atol=1e-7)
        out = ours.decode(got)
        assert out.shape == ref_out.shape
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-4)
        assert got.codes[..., 0].unique().numel() > 1 or got.codes[..., -1].unique().numel() > 1
    if not ref.normalize:  # our encoder's speed paths run the package's ops: bit-identical latents
        with torch.no_grad():
            assert torch.equal(ours.encode_latents(wav)[0].transpose(1, 2), ref.encoder(wav))
    return ours


def test_encodec_24khz_parity():
    ours = check_parity(24000, 0, (1.5, 6.0, 24.0), 1.0)
    assert ours.bitrate(8) == 6000.0 and ours.frame_rate == 75.0 and ours.hop_length == 320


def test_encodec_48khz_parity_chunked():
    # 1.3 s at 48 kHz = two 1 s chunks overlapping by 1 %, each with its own scale
    ours = check_parity(48000, 0, (3.0, 24.0), 1.1)
    assert ours.max_codebooks == 16 and ours.n_q_for_bandwidth(6.0) == 4


@pytest.mark.slow
@pytest.mark.parametrize("sample_rate,seed", [(24000, 1), (24000, 2), (48000, 1), (48000, 2)])
def test_encodec_parity_all_bandwidths(sample_rate, seed):
    bws = (1.5, 3.0, 6.0, 12.0, 24.0) if sample_rate == 24000 else (3.0, 6.0, 12.0, 24.0)
    check_parity(sample_rate, seed, bws, 2.5)


@pytest.fixture(scope="module")
def model_24k():
    wav = speech(24000, 1, 1.0)
    return convert_checkpoint("encodec", official_model(24000, 3, wav).state_dict(),
                              config="encodec_24khz")


@pytest.mark.parametrize("sample_rate", [24000, 48000])
def test_padded_batch_equals_one_by_one(sample_rate):
    channels = 1 if sample_rate == 24000 else 2
    a = speech(sample_rate, channels, 1.02 if sample_rate == 48000 else 0.9, "LJ001-0003.wav")
    b = speech(sample_rate, channels, 0.43, "LJ001-0004.wav")  # not a multiple of the hop
    ref = official_model(sample_rate, 4, a)
    model = convert_checkpoint("encodec", ref.state_dict())  # architecture read from the weights
    batch = torch.zeros(2, channels, a.shape[-1])
    batch[0], batch[1, :, : b.shape[-1]] = a[0], b[0]
    got = model.encode(batch, sample_rate, n_q=4, lengths=torch.tensor([a.shape[-1], b.shape[-1]]))
    out = model.decode(got)
    for i, x in enumerate((a, b)):
        single = model.encode(x, sample_rate, n_q=4)
        n = int(got.lengths[i])
        assert n == single.codes.shape[1] == model.num_frames(x.shape[-1])
        assert torch.equal(got.codes[i, :n], single.codes[0])
        assert torch.all(got.codes[i, n:] == 0)
        y = model.decode(single)
        torch.testing.assert_close(out[i, :, : x.shape[-1]], y[0], rtol=0, atol=1e-5)
        assert torch.all(out[i, :, x.shape[-1]:] == 0)
        ref_codes, _, _ = official_encode_decode(ref, x, ref.target_bandwidths[1])
        assert torch.equal(single.to_official()[:, :2], ref_codes[:, :2])


def test_fewer_levels_lower_bitrate_and_prefix(model_24k):
    wav = speech(24000, 1, 0.8)
    full = model_24k.encode(wav, 24000)
    assert full.n_q == 32 and model_24k.bitrate() == 24000.0
    coarse = model_24k.encode(wav, 24000, n_q=2)
    assert torch.equal(coarse.codes, full.codes[..., :2])  # residual levels: a prefix
    assert model_24k.bitrate(2) == 1500.0
    err_full = (model_24k.decode(full) - wav).pow(2).mean()
    y2 = model_24k.decode(coarse.codes)  # a bare tensor decodes too (untrimmed)
    assert y2.shape[-1] == full.codes.shape[1] * 320
    assert torch.isfinite(err_full)


def test_clear_errors(model_24k):
    m = model_24k
    ok = torch.zeros(1, 1, 2400)
    with pytest.raises(ValueError, match="empty"):
        m.encode(torch.zeros(1, 1, 0), 24000)
    with pytest.raises(ValueError, match="NaN"):
        m.encode(torch.full((1, 1, 2400), float("nan")), 24000)
    with pytest.raises(ValueError, match="wrong sample rate.*24000.*16000"):
        m.encode(ok, 16000)
    assert m.encode(torch.zeros(1, 1, 1600), 16000, resample=True).num_samples.item() == 2400
    with pytest.raises(ValueError, match="too many channels"):
        m.encode(torch.zeros(1, 2, 2400), 24000)
    with pytest.raises(ValueError, match=r"\[B, C, T\]"):
        m.encode(torch.zeros(2400), 24000)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        m.encode(torch.full((1, 1, 2400), 3.0), 24000)
    with pytest.raises(TypeError, match="float"):
        m.encode(torch.zeros(1, 1, 2400, dtype=torch.int16), 24000)
    with pytest.raises(ValueError, match="n_q must be an int in \\[1, 32\\]"):
        m.encode(ok, 24000, n_q=33)
    with pytest.raises(ValueError, match="out of range"):
        m.decode(torch.full((1, 4, 2), 1024))
    with pytest.raises(ValueError, match="out of range"):
        m.decode(torch.full((1, 4, 2), -1))
    with pytest.raises(ValueError, match="n_q"):
        m.decode(torch.zeros(1, 4, 33, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        m.decode(torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="bandwidth must be one of"):
        m.n_q_for_bandwidth(5.0)
    codes = m.encode(ok, 24000, n_q=2)
    bad = AudioCodes(codes.codes, codes.lengths + 1, codes.num_samples)
    with pytest.raises(ValueError, match="frames"):
        m.decode(bad)


def test_converter_rejects_mismatched_weights(model_24k):
    sd = official_model(24000, 0, speech(24000, 1, 0.3)).state_dict()
    broken = dict(sd)
    broken.pop("decoder.model.0.conv.conv.weight_g")
    broken["encoder.model.99.conv.conv.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="missing keys.*decoder.layers.0.conv.weight_g"):
        convert_checkpoint("encodec", broken, config="encodec_24khz")
    with pytest.raises(CheckpointError, match="shape mismatches|unexpected"):
        convert_checkpoint("encodec", sd, config="encodec_48khz")


def test_official_file_and_save_load_round_trip(tmp_path, model_24k):
    import visualtok

    sd = official_model(24000, 5, speech(24000, 1, 0.3)).state_dict()
    torch.save(sd, tmp_path / "encodec_24khz-test.th")
    model = convert_checkpoint("encodec", tmp_path / "encodec_24khz-test.th",
                               config="encodec_24khz")
    wav = speech(24000, 1, 0.5)
    codes = model.encode(wav, 24000, n_q=8)
    out = model.save_pretrained(tmp_path / "ours")
    again = visualtok.load(out)
    assert torch.equal(again.encode(wav, 24000, n_q=8).codes, codes.codes)
    # the official file in weights/<preset>/ is converted on load, offline
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISUALTOK_WEIGHTS", str(tmp_path / "weights"))
        with pytest.raises(FileNotFoundError, match="encodec_24khz-d7cc33bc.th"):
            visualtok.load("encodec_24khz")
        (tmp_path / "weights" / "encodec_24khz").mkdir(parents=True)
        (tmp_path / "encodec_24khz-test.th").rename(
            tmp_path / "weights" / "encodec_24khz" / "encodec_24khz-d7cc33bc.th")
        loaded = visualtok.load("encodec_24khz")
    assert torch.equal(loaded.encode(wav, 24000, n_q=8).codes, codes.codes)
    from visualtok.registry import get_model_entry

    assert get_model_entry("encodec_24khz").pretrained.sample_rate == 24000


def test_encodec_training_step_uses_the_core_rvq():
    from visualtok.registry import create_model

    torch.manual_seed(0)
    m = create_model("encodec_24khz", n_filters=4, ratios=(8, 5), dimension=8, lstm_layers=1,
                     codebook_size=16,
                     quantizer=dict(type="rvq", dim=8, codebook_size=16, num_quantizers=2,
                                    ema=True, kmeans_init=True, kmeans_iters=5,
                                    dead_code_threshold=2.0, beta=1.0)).train()
    wav = 0.3 * torch.randn(2, 1, 4000)
    levels = m.quantizer.levels
    assert not bool(levels[0].initted)
    recon, quant = m(wav)
    assert recon.shape == wav.shape and bool(levels[0].initted)  # k-means on the first batch
    (recon - wav).pow(2).mean().add(quant.losses["total"]).backward()
    assert m.encoder.layers[0].conv.weight_v.grad.abs().sum() > 0
    assert levels[0].embedding.weight.grad is None  # EMA codebook: no gradient
    before = levels[0].embedding.weight.clone()
    m(wav)
    assert not torch.equal(before, levels[0].embedding.weight)  # the EMA update moved it
