"""LlamaGen VQGAN parity with the official code: the ``vq_tiny`` fixture (official state dict ->
converter -> our model -> official outputs, on a non-square 64x96 input) and the full-size key/shape
manifest of VQ-16 and VQ-8."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from visualtok import create_model
from visualtok.convert import convert_checkpoint
from visualtok.convert.vqgan import (
    convert_vqgan,
    convert_vqgan_state_dict,
    vqgan_config_from_official,
)
from visualtok.hub import CheckpointError
from visualtok.image.vqgan import VQGAN

FIXTURE_OVERRIDES = dict(channels=32, num_res_blocks=2)  # hard-coded upstream, patched to 32


@pytest.fixture(scope="module")
def fixture():
    d = shared_path("fixtures", "llamagen_vq", "vq_tiny")
    info = json.loads((d / "fixture.json").read_text())
    io = load_file(str(d / "io.safetensors"))
    official = load_file(str(d / "official_state_dict.safetensors"))
    model = convert_vqgan(official, config=info["config"], overrides=FIXTURE_OVERRIDES)
    return info, io, official, model


def _atol(info, name):
    return info["tolerance"]["per_tensor"][name]["suggested_atol_fp32"]


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def test_fixture_parity(fixture):
    info, io, _, model = fixture
    assert not model.training and model.size_multiple == 16
    x = (io["input"] + 1) / 2  # the fixture input is [-1, 1]; our API takes [0, 1]
    b, h, w = 2, *info["actual_dims"]["token_grid"]
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(io["input"]), io["encoder_out"], rtol=0,
                                   atol=_atol(info, "encoder_out"))
        z = model.encode_latents(x)
        assert z.shape == (b, h, w, 8)
        torch.testing.assert_close(_nchw(z), io["pre_quant"], rtol=0, atol=_atol(info, "pre_quant"))
        quant = model.quantizer(z)
        torch.testing.assert_close(_nchw(quant.z_q), io["quant"], rtol=0, atol=_atol(info, "quant"))
        # tokens exactly equal; flat official order is (b, h, w) = our raster order
        codes = model.encode(x)
        assert codes.shape == (b, h, w, 1) and codes.dtype == torch.int64
        assert torch.equal(codes.reshape(-1), io["indices"])
        assert torch.equal(quant.codes, codes)
        official_codes = io["indices"].view(b, h, w, 1)
        from_indices = model.quantizer.decode(official_codes)
        torch.testing.assert_close(_nchw(from_indices), io["quant_from_indices"], rtol=0,
                                   atol=_atol(info, "quant_from_indices"))
        # decoder checks start from the stored official latents / indices
        torch.testing.assert_close(model.pixels(io["quant"]), io["decoded"], rtol=0,
                                   atol=_atol(info, "decoded"))
        decoded_code = model.decode_latents(from_indices) * 2 - 1
        torch.testing.assert_close(decoded_code, io["decoded_code"], rtol=0,
                                   atol=_atol(info, "decoded_code"))
        # public decode: [0, 1], clamped, on the non-square grid
        expected = (io["decoded_code"].clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(model.decode(official_codes), expected, rtol=0,
                                   atol=_atol(info, "decoded_code"))


def test_image_size_not_divisible_is_a_clear_error(fixture):
    model = fixture[3]
    with pytest.raises(ValueError, match=r"divisible by the downsampling factor 16.*got 64x88"):
        model.encode(torch.rand(1, 3, 64, 88))
    with pytest.raises(ValueError, match="image_size 100 must be divisible"):
        create_model("vqgan_16", image_size=100)
    # any grid of codes decodes; a 1D row does not
    assert model.decode(torch.zeros(1, 2, 3, 1, dtype=torch.long)).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="codes must be"):
        model.decode(torch.zeros(1, 6, 1, dtype=torch.long))


def test_converter_lists_missing_unexpected_and_wrong_family(fixture):
    info, _, official, _ = fixture
    bad = dict(official)
    del bad["decoder.norm_out.weight"]
    del bad["encoder.mid.1.k.weight"]
    bad["encoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"encoder\.extra\.weight[\s\S]*encoder\.mid\.1\.q"
                                              r"[\s\S]*missing keys: .*decoder\.norm_out\.weight"):
        convert_vqgan(bad, config=info["config"], overrides=FIXTURE_OVERRIDES)
    # the official widths without the fixture's patched ch=32: shapes cannot match
    shapes = r"shape mismatches: .*checkpoint \(64, 64, 3, 3\) vs model \(256, 256, 3, 3\)"
    with pytest.raises(CheckpointError, match=shapes):
        convert_checkpoint("vqgan", official, config=info["config"])
    # a ReTok checkpoint through the VQGAN converter is named as such
    retok = {"s2to1encoder.ln_pre.weight": torch.zeros(4), **official}
    with pytest.raises(CheckpointError, match=r"retok checkpoint.*visualtok convert retok"):
        convert_vqgan(retok, config=info["config"], overrides=FIXTURE_OVERRIDES)
    with pytest.raises(ValueError, match="unknown field"):
        vqgan_config_from_official({"model_args": {"codebook_sise": 8}})


def test_converted_checkpoint_dir_loads_and_wrapped_weights(fixture, tmp_path):
    import visualtok

    info, io, official, model = fixture
    weights = tmp_path / "vq_tiny.pt"
    torch.save({"model": official}, weights)  # the layout of the released .pt files
    (tmp_path / "config.json").write_text(json.dumps(info["config"]))
    converted = convert_vqgan(weights, config=tmp_path / "config.json",
                              overrides=FIXTURE_OVERRIDES)
    out = converted.save_pretrained(tmp_path / "converted")
    loaded = visualtok.load(out)
    assert isinstance(loaded, VQGAN)
    x = (io["input"] + 1) / 2
    assert torch.equal(loaded.encode(x).reshape(-1), io["indices"])


@pytest.fixture(scope="module")
def manifest():
    return json.loads(shared_path("fixtures", "llamagen_vq",
                                  "official_state_dict_manifest.json").read_text())


@pytest.mark.parametrize(("name", "preset", "factor"), [("VQ-16", "vqgan_16", 16),
                                                         ("VQ-8", "vqgan_8", 8)])
def test_manifest_keys_and_shapes(manifest, name, preset, factor):
    entry = manifest[name]
    with torch.device("meta"):
        model = create_model(preset)
        from_official = VQGAN(vqgan_config_from_official(entry["model_args"]))
        official = {k: torch.empty(shape) for k, shape in entry["state_dict"].items()}
    assert model.config == from_official.config  # our preset is what ModelArgs describes
    assert model.size_multiple == factor and model.token_shape == (256 // factor,) * 2
    dropped = sum(torch.Size(entry["state_dict"][b]).numel() for b in entry["buffers"])
    assert sum(p.numel() for p in model.parameters()) == entry["num_elements"] - dropped
    mapped = convert_vqgan_state_dict(official, model)  # raises on any mismatch
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
