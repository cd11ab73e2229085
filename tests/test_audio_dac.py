"""DAC parity on ``../shared/fixtures/dac/tiny`` (made with descript-audio-codec 1.0.0), manifest
checks for the released configurations, and presets."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from visualtok.audio.dac import DAC, DACConfig
from visualtok.convert import convert_checkpoint
from visualtok.convert.dac import convert_dac_state_dict, dac_config_for
from visualtok.hub import CheckpointError
from visualtok.registry import create_model, get_model_entry, list_models

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5  # fixture default (fp32); the decoded audio is within 3e-7 in practice


@pytest.fixture(scope="module")
def fixture():
    d = shared_path("fixtures", "dac", "tiny")
    return d, load_file(str(d / "io.safetensors")), json.loads((d / "fixture.json").read_text())


@pytest.mark.parametrize("source", ["official_checkpoint.pth", "official_state_dict.safetensors"])
def test_dac_parity(fixture, source):
    d, io, info = fixture
    # the .pth carries its kwargs; the bare state dict gets the one thing shapes cannot tell
    config = None if source.endswith(".pth") else {"sample_rate": info["kwargs"]["sample_rate"]}
    model = convert_checkpoint("dac", d / source, config=config)
    assert model.sample_rate == 22050 and model.hop_length == 40 and model.max_codebooks == 4
    x = io["input"]
    codes = model.encode(x, 22050)
    assert torch.equal(codes.to_official(), io["codes"])  # exactly equal
    with torch.no_grad():
        z_q = model.quantizer.decode(codes.codes).transpose(1, 2)
        latents = model.encode_latents(x)
        residual, projected = latents, []
        for i, level in enumerate(model.quantizer.levels):  # DAC's "latents": each level's z_e
            projected.append(level.project_in(residual))
            step = level._dequantize(codes.codes[..., i].reshape(-1, 1))
            residual = residual - step.reshape(residual.shape)
        proj = torch.cat(projected, dim=-1).transpose(1, 2)
    torch.testing.assert_close(z_q, io["z"], rtol=0, atol=ATOL)
    torch.testing.assert_close(proj, io["latents"], rtol=0, atol=ATOL)
    from_codes = model.decode(io["codes"].transpose(1, 2))  # the documented one-line transpose
    torch.testing.assert_close(from_codes, io["decoded_from_codes"], rtol=0, atol=ATOL)
    torch.testing.assert_close(model.decode(codes), io["decoded"], rtol=0, atol=ATOL)
    nq2 = model.encode(x, 22050, n_q=2)
    assert torch.equal(nq2.to_official(), io["codes_nq2"])
    torch.testing.assert_close(model.decode(nq2), io["decoded_nq2"], rtol=0, atol=ATOL)
    assert model.bitrate(2) == pytest.approx(2 * 6 * 22050 / 40)


def test_dac_pth_and_state_dict_agree_and_reject_bad_input(fixture, tmp_path):
    d, io, _ = fixture
    a = convert_checkpoint("dac", d / "official_checkpoint.pth")
    sd = load_file(str(d / "official_state_dict.safetensors"))
    b = convert_checkpoint("dac", sd, config={"sample_rate": 22050})
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(ValueError, match="sample rate"):
        convert_checkpoint("dac", sd)  # not a released config: the rate cannot be guessed
    broken = dict(sd)
    broken.pop("quantizer.quantizers.1.codebook.weight")
    broken["quantizer.quantizers.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="quantizer.levels.1.embedding.weight"):
        convert_checkpoint("dac", broken, config={"sample_rate": 22050})
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights-only"):
        convert_checkpoint("dac", bad)
    with pytest.raises(ValueError, match="wrong sample rate.*22050"):
        a.encode(io["input"], 16000)
    with pytest.raises(ValueError, match="out of range.*64"):
        a.decode(torch.full((1, 3, 2), 64))
    with pytest.raises(ValueError, match="n_q must be an int in \\[1, 4\\]"):
        a.encode(io["input"], 22050, n_q=5)


def test_dac_save_load_round_trip(fixture, tmp_path):
    import visualtok

    d, io, _ = fixture
    model = convert_checkpoint("dac", d / "official_checkpoint.pth")
    again = visualtok.load(model.save_pretrained(tmp_path / "dac_tiny"))
    assert torch.equal(again.encode(io["input"], 22050).to_official(), io["codes"])


@pytest.mark.parametrize("name", ["44khz_8kbps", "24khz", "16khz", "44khz_16kbps"])
def test_released_config_manifests(name):
    manifest = json.loads(shared_path("fixtures", "dac", "official_state_dict_manifest.json")
                          .read_text())
    entry = manifest["models"][name]
    kwargs = {**manifest["defaults"], **entry["kwargs"]}
    state = {k: torch.empty(v, device="meta") for k, v in entry["state_dict"].items()}
    cfg = dac_config_for(None, state, kwargs)
    with torch.device("meta"):
        model = DAC(cfg)
    mapped = convert_dac_state_dict(state, model)  # raises listing any key or shape mismatch
    assert set(mapped) == set(model.state_dict())
    # our parameter count: the official one (weight-normed projections folded: minus each
    # projection's g vector)
    levels = cfg.n_codebooks
    folded = levels * (cfg.codebook_dim + cfg.latent_dim)
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"] - folded
    preset = {"44khz_8kbps": "dac_44khz", "24khz": "dac_24khz", "16khz": "dac_16khz",
              "44khz_16kbps": "dac_44khz_16kbps"}[name]
    rec = get_model_entry(preset).pretrained
    assert (rec.sample_rate, rec.hop_length, rec.num_codebooks) == (
        cfg.sample_rate, cfg.hop_length, cfg.n_codebooks)
    with torch.device("meta"):
        built = create_model(preset)
    assert built.config == cfg


def test_presets_listed_and_tiny_codec_round_trip():
    assert {"dac_16khz", "dac_24khz", "dac_44khz", "dac_44khz_16kbps", "encodec_24khz",
            "encodec_48khz"} <= set(list_models(task="audio-codec"))
    m = DAC(DACConfig(encoder_dim=4, encoder_rates=(2, 4), decoder_dim=16, decoder_rates=(4, 2),
                      n_codebooks=3, codebook_size=16, codebook_dim=4, sample_rate=8000)).eval()
    wav = torch.sin(torch.linspace(0, 60, 803))[None, None] * 0.5
    codes = m.encode(wav, 8000)
    assert codes.codes.shape == (1, 101, 3) and int(codes.lengths) == 101
    assert m.decode(codes).shape[-1] <= 803
    assert torch.equal(m.encode(wav, 8000, n_q=1).codes, codes.codes[..., :1])


def test_cli_convert_dac(fixture, tmp_path, capsys):
    import visualtok
    from visualtok.cli import main

    d, io, _ = fixture
    assert main(["convert", "dac", str(d / "official_checkpoint.pth"), "--out",
                 str(tmp_path / "dac")]) == 0
    assert "wrote" in capsys.readouterr().out
    model = visualtok.load(tmp_path / "dac")
    assert torch.equal(model.encode(io["input"], 22050).to_official(), io["codes"])
    assert main(["convert", "dac", str(d / "fixture.json"), "--out", str(tmp_path / "x")]) == 2
    assert "error" in capsys.readouterr().err


def test_dac_training_step_reaches_every_level():
    torch.manual_seed(0)
    m = DAC(DACConfig(encoder_dim=4, encoder_rates=(2, 4), decoder_dim=16, decoder_rates=(4, 2),
                      n_codebooks=3, codebook_size=16, codebook_dim=4, sample_rate=8000,
                      quantizer_dropout=0.5)).train()
    wav = 0.5 * torch.sin(torch.linspace(0, 300, 1600)).repeat(4, 1, 1)
    recon, quant = m(wav)
    assert recon.shape == wav.shape and set(quant.losses) == {"total", "commitment", "codebook"}
    ((recon - wav).abs().mean() + quant.losses["total"]).backward()
    for level in m.quantizer.levels:  # DAC trains every level's projections and codebook
        assert level.project_out.weight.grad.abs().sum() > 0
        assert level.embedding.weight.grad.abs().sum() > 0
    assert m.encoder.block[0].weight_v.grad.abs().sum() > 0


@pytest.mark.slow
def test_dac_16khz_full_size_against_the_official_package():
    """Only where ``descript-audio-codec`` imports (not a project dependency): the released
    16 kHz architecture, random weights, on real speech."""
    dac = pytest.importorskip("dac", reason="descript-audio-codec is not installed")
    from benchmarks.official import build_official_dac_16khz
    from visualtok.audio import read_audio

    ref, ours = build_official_dac_16khz(dac)
    wav, _ = read_audio(shared_path("data", "audio", "ljspeech_subset", "LJ001-0005.wav"),
                        sample_rate=16000, channels=1)
    wav = wav[None, :, :16000]
    with torch.no_grad():
        ref_codes = ref.encode(ref.preprocess(wav, 16000))[1]
        ref_audio = ref.decode(ref.quantizer.from_codes(ref_codes)[0])
    got = ours.encode(wav, 16000)
    assert torch.equal(got.to_official(), ref_codes)
    torch.testing.assert_close(ours.decode(got.codes), ref_audio, rtol=0, atol=1e-5)
