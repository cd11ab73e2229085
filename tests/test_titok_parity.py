"""TiTok parity with the official code: fixtures (official state dict -> converter -> our model ->
official outputs) and the full-size key/shape manifest of all 9 released configs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from visualtok import create_model
from visualtok.convert import convert_checkpoint
from visualtok.convert.titok import (
    convert_titok,
    convert_titok_state_dict,
    titok_config_from_official,
)
from visualtok.hub import CheckpointError
from visualtok.image.titok import TiTok

PIXEL_ATOL = 1e-4  # through the MaskGIT CNN pixel decoder (its own fp32 noise is ~2.5e-5)
ATOL = 1e-5


def _load_fixture(variant: str):
    d = shared_path("fixtures", "titok", variant)
    info = json.loads((d / "fixture.json").read_text())
    io = load_file(str(d / "io.safetensors"))
    official = load_file(str(d / "official_state_dict.safetensors"))
    dims = info["actual_dims"]
    overrides = dict(
        encoder_width=dims["width"], decoder_width=dims["width"],
        encoder_depth=dims["num_layers"], decoder_depth=dims["num_layers"],
        encoder_heads=dims["num_heads"], decoder_heads=dims["num_heads"],
    )
    if dims.get("pixel_decoder_hidden_channels"):
        overrides["pixel_decoder_channels"] = dims["pixel_decoder_hidden_channels"]
    model = convert_titok(official, config=info["config"], overrides=overrides)
    return info, io, official, model


def _nchw_to_tokens(t: torch.Tensor) -> torch.Tensor:
    """Official ``[B, C, 1, N]`` -> ours ``[B, N, C]``."""
    return t[:, :, 0].transpose(1, 2)


@pytest.mark.parametrize("variant", ["legacy_stage2", "direct_vq"])
def test_vq_fixture_parity(variant):
    _, io, _, model = _load_fixture(variant)
    assert model.config.is_legacy == (variant == "legacy_stage2")
    pix_atol = PIXEL_ATOL if variant == "legacy_stage2" else ATOL
    with torch.no_grad():
        quant = model.quantizer(model.encode_latents(io["input"]))
        torch.testing.assert_close(quant.z_q, _nchw_to_tokens(io["z_quantized"]), rtol=0, atol=ATOL)
        tokens = io["tokens"][:, 0]  # [B, N]
        assert torch.equal(quant.codes[..., 0], tokens)
        assert torch.equal(model.encode(io["input"])[..., 0], tokens)
        # decoder checks start from the stored official latents / tokens
        decoded = model.decode_latents(_nchw_to_tokens(io["z_quantized"]))
        torch.testing.assert_close(decoded, io["decoded"], rtol=0, atol=pix_atol)
        from_tokens = model.decode_latents(model.quantizer.decode(tokens[..., None]))
        torch.testing.assert_close(from_tokens, io["decoded_from_tokens"], rtol=0, atol=pix_atol)
        # public decode = the same, clamped to [0, 1]
        torch.testing.assert_close(model.decode(tokens[..., None]),
                                   io["decoded_from_tokens"].clamp(0, 1), rtol=0, atol=pix_atol)


def test_vae_fixture_parity():
    _, io, _, model = _load_fixture("direct_vae")
    assert model.continuous
    with torch.no_grad():
        moments = model.encode_latents(io["input"])
        expected = _nchw_to_tokens(io["encoder_moments"])
        torch.testing.assert_close(moments, expected, rtol=0, atol=ATOL)
        mean = model.posterior_mean(io["input"])
        torch.testing.assert_close(mean, _nchw_to_tokens(io["posterior_mean"]), rtol=0, atol=ATOL)
        decoded = model.decode_latents(_nchw_to_tokens(io["posterior_mean"]))
        torch.testing.assert_close(decoded, io["decoded_from_mean"], rtol=0, atol=ATOL)
        # eval forward decodes the posterior mean (deterministic), and PTQ codes decode
        out = model(io["input"])
        torch.testing.assert_close(out.recon, io["decoded_from_mean"], rtol=0, atol=ATOL)
        codes = model.encode(io["input"])
        assert codes.shape == (2, 16, 8) and codes.dtype == torch.int64
        assert model.decode(codes).shape == (2, 3, 64, 64)


def test_legacy_reshape_is_a_reinterpretation_not_a_transpose():
    """Flipping is_legacy on the legacy fixture must change the latents (the quirk matters)."""
    _, io, official, model = _load_fixture("legacy_stage2")
    model.encoder.is_legacy = False
    with torch.no_grad():
        z = model.quantizer(model.encode_latents(io["input"])).z_q
    assert (z - _nchw_to_tokens(io["z_quantized"])).abs().max() > 1e-2


def test_converter_rejects_missing_unexpected_and_misshaped_keys():
    info, _, official, _ = _load_fixture("direct_vq")
    overrides = dict(encoder_width=64, decoder_width=64, encoder_depth=2, decoder_depth=2,
                     encoder_heads=4, decoder_heads=4)
    bad = dict(official)
    del bad["encoder.ln_post.weight"]
    bad["encoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"encoder\.extra\.weight[\s\S]*ln_post"):
        convert_titok(bad, config=info["config"], overrides=overrides)
    # config / checkpoint mismatch: the official config says 512 codes, ask for 1024
    with pytest.raises(CheckpointError, match="quantizer.embedding.weight"):
        cfg = json.loads(json.dumps(info["config"]))
        cfg["model"]["vq_model"]["codebook_size"] = 1024
        convert_titok(official, config=cfg, overrides=overrides)
    # a legacy config for direct weights: the head keys do not match
    with pytest.raises(CheckpointError, match="decoder.conv_out"):
        cfg = json.loads(json.dumps(info["config"]))
        cfg["model"]["vq_model"]["is_legacy"] = True
        cfg["model"]["vq_model"]["finetune_decoder"] = False
        convert_titok(official, config=cfg, overrides=overrides)


def test_convert_checkpoint_dispatch_reports_size_mismatch():
    """Through the generic front door, without the fixture's shrunk widths: shapes cannot match."""
    info, _, official, _ = _load_fixture("direct_vq")
    msg = r"missing keys: .*transformer\.2\..*shape mismatches: .*embedding: checkpoint \(1, 64\)"
    with pytest.raises(CheckpointError, match=msg):
        convert_checkpoint("titok", official, config=info["config"])


def test_converted_checkpoint_dir_loads(tmp_path):
    import visualtok
    from visualtok.convert.titok import convert_titok_to_dir

    info, io, official, model = _load_fixture("legacy_stage2")
    from safetensors.torch import save_file

    weights = tmp_path / "official.safetensors"
    save_file(official, str(weights))
    (tmp_path / "config.json").write_text(json.dumps(info["config"]))
    dims = info["actual_dims"]
    out = convert_titok_to_dir(
        weights, tmp_path / "converted", config=tmp_path / "config.json",
        overrides=dict(encoder_width=64, decoder_width=64, encoder_depth=2, decoder_depth=2,
                       encoder_heads=4, decoder_heads=4,
                       pixel_decoder_channels=dims["pixel_decoder_hidden_channels"]),
    )
    loaded = visualtok.load(out)
    assert isinstance(loaded, TiTok)
    assert torch.equal(loaded.encode(io["input"]), model.encode(io["input"]))


MANIFEST_NAMES = [
    "titok_s128", "titok_b64", "titok_l32", "titok_sl256_vq8k", "titok_bl128_vq8k",
    "titok_bl64_vq8k", "titok_ll32_vae_c16", "titok_bl64_vae_c16", "titok_bl128_vae_c16",
]


@pytest.fixture(scope="module")
def manifest():
    path = shared_path("fixtures", "titok", "official_state_dict_manifest.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_manifest_keys_and_shapes(manifest, name):
    entry = manifest[name]
    with torch.device("meta"):
        model = create_model(name)
        from_official = TiTok(titok_config_from_official(entry))
        official = {k: torch.empty(shape) for k, shape in entry["state_dict"].items()}
    # our preset is exactly what the official config describes
    assert model.config == from_official.config
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    mapped = convert_titok_state_dict(official, model)  # raises on any mismatch
    own = model.state_dict()
    assert set(mapped) == set(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    rec = visualtok_entry(name)
    assert rec.hub_id == f"yucornetto/tokenizer_{name}_imagenet" and rec.format == "titok"
    assert rec.num_tokens == model.num_tokens


def visualtok_entry(name):
    from visualtok.registry import get_model_entry

    return get_model_entry(name).pretrained
