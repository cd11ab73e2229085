"""Video configs are typed, bounded ``Config`` dataclasses (like the image ones): a bad value is a
ValueError / TypeError naming the field; plus the clear input errors of the video models."""

from __future__ import annotations

import pytest
import torch

from visualtok.config import Config, config_from_dict
from visualtok.video.titok3d import TiTok3DConfig
from visualtok.video.vqtoken import (
    CrossDynamicsAttention,
    CrossDynamicsConfig,
    VQTokenCodes,
    VQTokenConfig,
    check_features,
)

_TINY3D = dict(num_frames=8, image_size=32, encoder_width=64, encoder_depth=1, encoder_heads=4,
               decoder_width=64, decoder_depth=1, decoder_heads=4, num_latent_tokens=4,
               token_size=4, quantizer=dict(type="fsq", levels=(8, 5, 5, 5), dim=4))


@pytest.mark.parametrize("cls", [TiTok3DConfig, VQTokenConfig, CrossDynamicsConfig])
def test_video_configs_are_config_dataclasses(cls):
    assert issubclass(cls, Config)
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict(cls, {"no_such_field": 1})


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("num_frames", 0, ValueError, r"TiTok3DConfig\.num_frames"),
        ("num_frames", 8.0, TypeError, r"TiTok3DConfig\.num_frames"),
        ("image_size", -32, ValueError, r"TiTok3DConfig\.image_size"),
        ("tubelet", (4, 8), ValueError, r"TiTok3DConfig\.tubelet must be a list of 3"),
        ("tubelet", (4, 0, 8), ValueError, r"TiTok3DConfig\.tubelet"),
        ("tubelet", (3, 8, 8), ValueError, r"TiTok3DConfig\.num_frames .*tubelet"),
        ("tubelet", (4, 5, 5), ValueError, r"TiTok3DConfig\.image_size .*tubelet"),
        ("pos_embed", "sincos", ValueError, r"TiTok3DConfig\.pos_embed"),
        ("encoder_heads", 3, ValueError, r"TiTok3DConfig\.encoder_heads"),
        ("decoder_depth", True, TypeError, r"TiTok3DConfig\.decoder_depth"),
        ("mlp_ratio", float("nan"), ValueError, r"TiTok3DConfig\.mlp_ratio"),
        ("num_latent_tokens", 0, ValueError, r"TiTok3DConfig\.num_latent_tokens"),
        ("token_size", "4", TypeError, r"TiTok3DConfig\.token_size"),
    ],
)
def test_titok3d_config_bad_values_name_the_field(field, value, error, match):
    with pytest.raises(error, match=match):
        TiTok3DConfig(**{**_TINY3D, field: value})
    with pytest.raises(error, match=match):  # the same from a config dict (config.json / YAML)
        config_from_dict(TiTok3DConfig, {**_TINY3D, field: value})


def test_titok3d_config_accepts_lists_and_mappings():
    cfg = config_from_dict(TiTok3DConfig, {**_TINY3D, "tubelet": [4, 8, 8]})
    assert cfg.tubelet == (4, 8, 8) and cfg.grid == (2, 4, 4)
    with pytest.raises(ValueError, match="token_size"):
        TiTok3DConfig(**{**_TINY3D, "token_size": 5})  # FSQ 8-5-5-5 has dim 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(min_clusters=0), ValueError, r"VQTokenConfig\.min_clusters"),
        (dict(max_clusters=2.5), TypeError, r"VQTokenConfig\.max_clusters"),
        (dict(min_clusters=31, max_clusters=32), ValueError, "min_clusters <= max_clusters - 2"),
        (dict(num_clusters=0), ValueError, r"VQTokenConfig\.num_clusters"),
        (dict(num_clusters=True), TypeError, r"VQTokenConfig\.num_clusters"),
        (dict(max_iters=0), ValueError, r"VQTokenConfig\.max_iters"),
        (dict(tol=-1e-4), ValueError, r"VQTokenConfig\.tol"),
        (dict(tol=float("inf")), ValueError, r"VQTokenConfig\.tol"),
        (dict(seed=-1), ValueError, r"VQTokenConfig\.seed"),
    ],
)
def test_vqtoken_config_bad_values_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        VQTokenConfig(**kwargs)


def test_vqtoken_fixed_k_skips_the_range_rule():
    assert VQTokenConfig(min_clusters=31, max_clusters=32, num_clusters=5).ks() == [5]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("feature_dim", 0, ValueError),
        ("num_frames", -1, ValueError),
        ("tokens_per_frame", 1.5, TypeError),
        ("width", 30, ValueError),  # 8 heads do not divide 30
        ("heads", 0, ValueError),
        ("depth", "1", TypeError),
        ("num_output_tokens", 0, ValueError),
        ("decoder_depth", None, TypeError),
    ],
)
def test_cross_dynamics_config_bad_values_name_the_field(field, value, error):
    with pytest.raises(error, match=rf"CrossDynamicsConfig\.{field}|CrossDynamicsConfig.* {field}"):
        CrossDynamicsConfig(**{field: value})


def test_features_of_the_wrong_dimension_and_layout():
    with pytest.raises(ValueError, match="dimension 95; this model expects 96"):
        check_features(torch.zeros(2, 4, 95), dim=96)
    with pytest.raises(ValueError, match=r"\[T frames"):
        check_features(torch.zeros(0, 4, 96))  # zero frames
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_features([[0.0]])
    m = CrossDynamicsAttention(CrossDynamicsConfig(feature_dim=8, num_frames=2,
                                                   tokens_per_frame=3, width=16, heads=2,
                                                   num_output_tokens=2))
    codes, hmap = torch.randn(1, 2, 8), torch.zeros(1, 2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"codes must be \[B, K, 8\]"):
        m(torch.randn(1, 2, 7), hmap)
    with pytest.raises(ValueError, match=r"hash_map must be \[B=1, T, 3\]"):
        m(codes, torch.zeros(1, 2, 4, dtype=torch.long))  # wrong layout
    with pytest.raises(ValueError, match="3 frames; this module takes 1..2"):
        m(codes, torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be"):
        m.loss(codes, hmap, torch.randn(1, 2, 3, 9))  # reconstruction target of the wrong dim


def test_vqtoken_file_errors_name_the_file(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        VQTokenCodes.load(tmp_path / "missing.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors"):
        VQTokenCodes.load(empty)
    good = VQTokenCodes(torch.randn(3, 4), torch.tensor([[0, 1], [2, 2]])).save(tmp_path / "g.st")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-7])  # truncated
    with pytest.raises(ValueError, match="cut.safetensors"):
        VQTokenCodes.load(cut)
    other = tmp_path / "other.safetensors"
    save_file({"codes": torch.zeros(2, 4)}, str(other))
    with pytest.raises(ValueError, match="other.safetensors is not a VQToken file"):
        VQTokenCodes.load(other)
    bad_ids = tmp_path / "ids.safetensors"
    save_file({"codes": torch.zeros(2, 4), "hash_map": torch.full((2, 2), 5, dtype=torch.int32)},
              str(bad_ids), metadata={"format": "visualtok-vqtoken"})
    with pytest.raises(ValueError, match=r"ids.safetensors: hash_map ids must lie in \[0, 2\)"):
        VQTokenCodes.load(bad_ids)
