"""ReTok parity with the official code: the ``retok_tiny`` fixture (official state dict -> converter
-> our model -> official outputs, incl. prefix decoding from 4 and from all 480 tokens) and the
full-size key/shape manifest of VQ_SS256 and VQ_SB256."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from visualtok import create_model
from visualtok.convert import convert_checkpoint
from visualtok.convert.retok import (
    convert_retok,
    convert_retok_state_dict,
    retok_config_from_official,
)
from visualtok.hub import CheckpointError
from visualtok.image.retok import ReTok, multi_level_queries

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(dims: dict) -> dict:
    """What upstream hard-codes (patched smaller in the fixture), in our field names."""
    enc, dec = dims["s2to1encoder"], dims["s1to2decoder"]
    return dict(channels=dims["cnn_ch"], num_res_blocks=dims["num_res_blocks"],
                encoder_width=enc["width"], encoder_depth=enc["num_layers"],
                encoder_heads=enc["num_heads"], decoder_width=dec["width"],
                decoder_depth=dec["num_layers"], decoder_heads=dec["num_heads"])


@pytest.fixture(scope="module")
def fixture():
    d = shared_path("fixtures", "retok", "retok_tiny")
    info = json.loads((d / "fixture.json").read_text())
    io = load_file(str(d / "io.safetensors"))
    official = load_file(str(d / "official_state_dict.safetensors"))
    overrides = _overrides(info["actual_dims"])
    model = convert_retok(official, config=info["config"], overrides=overrides)
    return info, io, official, model


def _atol(info, name):
    return info["tolerance"]["per_tensor"][name]["suggested_atol_fp32"]


def _tokens(t: torch.Tensor) -> torch.Tensor:
    """Official ``[B, C, 1, L]`` -> ours ``[B, L, C]``."""
    return t[:, :, 0].transpose(1, 2)


def test_encoder_and_tokens(fixture):
    info, io, _, model = fixture
    assert model.token_shape == (480,) and model.config.total_tokens == 480
    x = (io["input"] + 1) / 2  # the fixture input is [-1, 1]; our API takes [0, 1]
    with torch.no_grad():
        feats = model.encoder(io["input"])
        torch.testing.assert_close(feats, io["cnn_features"], rtol=0,
                                   atol=_atol(info, "cnn_features"))
        torch.testing.assert_close(model.s2to1encoder(io["cnn_features"]),
                                   _tokens(io["s2to1_out"]), rtol=0, atol=_atol(info, "s2to1_out"))
        z = model.encode_latents(x)
        torch.testing.assert_close(z, _tokens(io["pre_quant"]), rtol=0,
                                   atol=_atol(info, "pre_quant"))
        quant = model.quantizer(z)  # the rotation trick's output is within 4e-6 of the row
        torch.testing.assert_close(quant.z_q, _tokens(io["quant"]), rtol=0,
                                   atol=_atol(info, "quant"))
        codes = model.encode(x)
        assert codes.shape == (2, 480, 1)
        assert torch.equal(codes.reshape(-1), io["indices"])  # exactly, (batch, token) order
        torch.testing.assert_close(model.quantizer.decode(codes), _tokens(io["quant_from_indices"]),
                                   rtol=0, atol=_atol(info, "quant_from_indices"))


def test_decoder_from_stored_latents_and_prefixes(fixture):
    info, io, _, model = fixture
    codes = io["indices"].view(2, 480, 1)
    with torch.no_grad():
        # official decode(quant) without num_tokens reads the first 256 of the 480 tokens
        rec, inner = model.decode_features(_tokens(io["quant"])[:, :256], inner=True)
        torch.testing.assert_close(rec, io["rec_spatial"], rtol=0, atol=_atol(info, "rec_spatial"))
        torch.testing.assert_close(inner, io["decoder_inner_feat"], rtol=0,
                                   atol=_atol(info, "decoder_inner_feat"))
        torch.testing.assert_close(model.decoder(rec), io["decoded"], rtol=0,
                                   atol=_atol(info, "decoded"))
        out = model.decode_latents(model.quantizer.decode(codes)) * 2 - 1  # all 480 tokens
        torch.testing.assert_close(out, io["decoded_code_k480"], rtol=0,
                                   atol=_atol(info, "decoded_code_k480"))
        public = model.decode(codes[:, :4])  # a 4-token prefix, [0, 1], clamped
        torch.testing.assert_close(public, (io["decoded_code_k4"].clamp(-1, 1) + 1) / 2, rtol=0,
                                   atol=_atol(info, "decoded_code_k4"))


def test_prefix_out_of_range_is_a_clear_error(fixture):
    _, io, _, model = fixture
    codes = io["indices"].view(2, 480, 1)
    with pytest.raises(ValueError, match=r"1 <= k <= 480"):
        model.decode(codes[:, :0])
    with pytest.raises(ValueError, match=r"1 <= k <= 480"):
        model.decode(torch.cat([codes, codes[:, :1]], dim=1))
    with pytest.raises(ValueError, match=r"1 <= k <= 480"):
        model.decode_latents(torch.zeros(1, 481, 8))
    with pytest.raises(ValueError, match="256x256"):
        model.encode(torch.rand(1, 3, 128, 128))


def test_multi_level_query_init_groups():
    """Groups 0 and 1 are the global mean; the finest group is 8 rows x 16 columns, row-major."""
    x = torch.randn(1, 3, 16, 16)
    q = multi_level_queries(x, 256)
    assert q.shape == (1, 256, 3)
    torch.testing.assert_close(q[0, 0], x.mean((2, 3))[0])
    torch.testing.assert_close(q[0, 1], x.mean((2, 3))[0])
    torch.testing.assert_close(q[0, 2], x[0, :, :, :8].mean((1, 2)))  # 1 row x 2 columns
    torch.testing.assert_close(q[0, 128], x[0, :, 0:2, 0].mean(1))  # kernel (2, 1)
    torch.testing.assert_close(q[0, 129], x[0, :, 0:2, 1].mean(1))


def test_converter_errors(fixture):
    info, _, official, _ = fixture
    overrides = _overrides(info["actual_dims"])
    bad = dict(official)
    del bad["s1to2decoder.distill_mlp.4.bias"]
    bad["s2to1encoder.extra"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected keys: s2to1encoder\.extra"
                                              r"[\s\S]*missing keys: .*distill_mlp\.4\.bias"):
        convert_retok(bad, config=info["config"], overrides=overrides)
    # a LlamaGen VQGAN checkpoint through the ReTok converter is named as such
    vq = load_file(str(shared_path("fixtures", "llamagen_vq", "vq_tiny",
                                   "official_state_dict.safetensors")))
    with pytest.raises(CheckpointError, match=r"vqgan checkpoint.*visualtok convert vqgan"):
        convert_retok(vq, config=info["config"], overrides=overrides)
    with pytest.raises(CheckpointError, match=r"vqgan checkpoint"):
        convert_checkpoint("retok", vq, preset="retok_tiny")
    cfg = json.loads(json.dumps(info["config"]))
    cfg["init_args"]["use_rope"] = True
    with pytest.raises(ValueError, match=r"\['use_rope'\] are not supported"):
        retok_config_from_official(cfg, overrides)
    cfg = json.loads(json.dumps(info["config"]))
    del cfg["init_args"]["adaptive_gn"]  # upstream default False: not what the checkpoints use
    with pytest.raises(ValueError, match="adaptive_gn=False is not supported"):
        retok_config_from_official(cfg, overrides)
    with pytest.raises(ValueError, match="'fixture' is not one of"):
        retok_config_from_official(info["config"])


def test_converted_checkpoint_dir_loads(fixture, tmp_path):
    import visualtok

    info, io, official, _ = fixture
    weights = tmp_path / "retok_tiny.pt"
    torch.save({"model": official}, weights)
    (tmp_path / "config.json").write_text(json.dumps({"model": info["config"]}))
    model = convert_retok(weights, config=tmp_path / "config.json",
                          overrides=_overrides(info["actual_dims"]))
    loaded = visualtok.load(model.save_pretrained(tmp_path / "converted"))
    assert isinstance(loaded, ReTok)
    assert torch.equal(loaded.encode((io["input"] + 1) / 2).reshape(-1), io["indices"])


@pytest.fixture(scope="module")
def manifest():
    return json.loads(shared_path("fixtures", "retok",
                                  "official_state_dict_manifest.json").read_text())


@pytest.mark.parametrize(("name", "preset"), [("VQ_SS256", "retok_ss"), ("VQ_SB256", "retok_sb")])
def test_manifest_keys_and_shapes(manifest, name, preset):
    entry = manifest[name]
    with torch.device("meta"):
        model = create_model(preset)
        from_official = ReTok(retok_config_from_official(entry))
        official = {k: torch.empty(shape) for k, shape in entry["state_dict"].items()}
    assert model.config == from_official.config  # our preset is what the official config says
    dropped = sum(torch.Size(entry["state_dict"][b]).numel() for b in entry["buffers"])
    assert sum(p.numel() for p in model.parameters()) == entry["num_elements"] - dropped
    mapped = convert_retok_state_dict(official, model)  # raises on any mismatch
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)


def test_load_without_official_weights_names_the_file(tmp_path, monkeypatch):
    import visualtok

    monkeypatch.setenv("VISUALTOK_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"retok_sb.*VQ_SB256_e250\.pt"):
        visualtok.load("retok_sb")
