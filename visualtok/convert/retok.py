"""Convert official ReTok checkpoints (zfu006/ReTok ``VQVitModelPlus``) into
``visualtok.image.retok.ReTok``.

The official model is configured by ``VQVitModelPlusArgs`` (a ``model.init_args`` block of
``configs/vq/VQ_SS256.yaml`` / ``VQ_SB256.yaml``); missing fields take that dataclass's defaults.
Q-Former widths come from the size names (``encoder_size``/``decoder_size``/``model_size``: tiny,
small, base, ...); the CNN width (128) is hard-coded upstream. Overrides in our field names set
those (``channels``, ``encoder_width``, ...). Only the configuration the released checkpoints use is
supported (multi-level query init, adaptive GroupNorm, depth-to-space upsampling, no CNN
attention, plain VQ); any other option is a clear error, never silently dropped.

Key map (everything else keeps its name):

* ``*.self_attn.in_proj_*`` -> ``*.self_attn.qkv.*``, ``*.multihead_attn.in_proj_*`` ->
  ``*.cross_attn.qkv.*``, ``*.out_proj.*`` -> ``*.proj.*`` (``nn.MultiheadAttention`` rows q, k, v
  are already our order);
* position tables ``[L, 1, W]`` (sequence-first) -> ``[L, W]``;
* ``quantize.embedding.weight`` -> ``quantizer.embedding.weight``; ``quantize.codebook_used`` (a
  training-time ring buffer of recent code ids) is read and dropped.

ReTok's own loader uses ``strict=False``, which hides missing keys; here every official key must be
consumed and every model key provided, with equal shapes, or a ``CheckpointError`` lists them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..image.retok import QUERY_SIZES, ReTok, ReTokConfig, retok_config
from ..registry import register_converter
from . import common
from .common import Weights
from .vqgan import DROPPED_BUFFERS, quantizer_key

__all__ = ["retok_config_from_official", "convert_retok_state_dict", "convert_retok"]

log = logging.getLogger(__name__)

# VQVitModelPlusArgs fields and their upstream defaults that change the computation
_REQUIRED = {  # field: (value we implement, upstream default)
    "multi_level_query_init": (True, False),
    "adaptive_gn": (True, False),
    "d2s_up": (True, False),
    "use_attn": (False, True),
}
_UNSUPPORTED = (  # must be off (their upstream default)
    "use_lfq", "simvq", "use_rope", "use_qk_norm", "learnable_1d_query_init", "rope_1d",
    "last_level_2d_query_init", "multi_level_2d_query_init", "learnable_2d_query_init",
    "res_up_down_sample", "downsample_match_channel", "upsample_match_channel",
    "res_codebook_updown_sample", "downsample_improve", "rope_2d", "stochastic",
    "encoder_2d_distill", "with_prior_model",
)
_TRAINING_ONLY = (  # no effect on the converted model's outputs
    "codebook_show_usage", "entropy_loss_ratio", "fea_rec_loss_type", "fea_rec_loss_weight",
    "use_flash_attn", "bernoulli_sample", "eval_deterministic", "freeze_codebook",
    "codebook_transform", "stochastic_temperature", "prior_model_config",
)
_USED = (
    "codebook_size", "codebook_embed_dim", "codebook_l2_norm", "commit_loss_beta", "rot",
    "encoder_ch_mult", "decoder_ch_mult", "model_size", "encoder_size", "decoder_size",
    "num_latent_tokens", "z_channels", "dropout_p", "distill_depth", "out_inner_dim",
)
_KNOWN = set(_REQUIRED) | set(_UNSUPPORTED) | set(_TRAINING_ONLY) | set(_USED)
_POSITION_TABLES = ("positional_embedding", "latent_token_positional_embedding",
                    "latent_token_positional_embedding_comp")
_RENAMES = (
    (".multihead_attn.", ".cross_attn."),
    (".in_proj_weight", ".qkv.weight"),
    (".in_proj_bias", ".qkv.bias"),
    (".out_proj.", ".proj."),
)


def _init_args(config: Any) -> dict[str, Any]:
    cfg = common.read_official_config(config, "ReTok")
    if "model" in cfg and isinstance(cfg["model"], dict):
        cfg = cfg["model"]
    args = cfg.get("init_args", cfg)
    if not isinstance(args, dict):
        raise ValueError("official ReTok config: model.init_args must be a mapping")
    return args


def retok_config_from_official(config: Any, overrides: dict[str, Any] | None = None) -> ReTokConfig:
    """``VQVitModelPlusArgs`` (``{"model": {"init_args": ...}}``, ``{"init_args": ...}``, flat, or
    a json/yaml path) -> ``ReTokConfig``. ``overrides`` (our field names) replace derived values."""
    args = _init_args(config)
    unknown = sorted(set(args) - _KNOWN - {"model_cls"})
    if unknown:
        raise ValueError(f"official ReTok init_args: unknown field(s) {unknown}")
    for name, (want, default) in _REQUIRED.items():
        if bool(args.get(name, default)) != want:
            raise ValueError(f"official ReTok option {name}={args.get(name, default)!r} is not "
                             f"supported (the released configs use {name}={want})")
    on = [name for name in _UNSUPPORTED if args.get(name)]
    if on:
        raise ValueError(f"official ReTok option(s) {on} are not supported (released configs "
                         f"keep them off)")
    if float(args.get("entropy_loss_ratio", 0.0)):
        log.warning("ReTok entropy_loss_ratio is a training loss; it is not carried over")
    overrides = dict(overrides or {})
    base: dict[str, Any] = {}
    model_size = args.get("model_size", "small")
    for side in ("encoder", "decoder"):
        size = args.get(f"{side}_size") or model_size
        fields = (f"{side}_width", f"{side}_depth", f"{side}_heads")
        if size in QUERY_SIZES:
            base.update(zip(fields, QUERY_SIZES[size]))
        elif not all(f in overrides for f in fields):
            raise ValueError(f"official ReTok {side}_size {size!r} is not one of "
                             f"{sorted(QUERY_SIZES)}: give {', '.join(fields)} as overrides")
    default = ReTokConfig()
    distill = args.get("distill_depth")
    base.update(
        encoder_ch_mult=tuple(args.get("encoder_ch_mult", default.encoder_ch_mult)),
        decoder_ch_mult=tuple(args.get("decoder_ch_mult", default.decoder_ch_mult)),
        z_channels=int(args.get("z_channels", 256)), dropout=float(args.get("dropout_p", 0.0)),
        num_latent_tokens=int(args.get("num_latent_tokens", 256)),
        distill_depth=None if distill is None else int(distill),
        distill_dim=int(args.get("out_inner_dim", 768)),
        quantizer=dict(type="vq", dim=int(args.get("codebook_embed_dim", 8)),
                       codebook_size=int(args.get("codebook_size", 16384)),
                       l2_normalize=bool(args.get("codebook_l2_norm", True)),
                       beta=float(args.get("commit_loss_beta", 0.25)),
                       rotation_trick=bool(args.get("rot", False))),
    )
    return retok_config(base, overrides)


def convert_retok_state_dict(state_dict: dict[str, torch.Tensor], model: ReTok) -> dict:
    """Map official keys onto ``model``'s; ``CheckpointError`` listing any mismatch.

    Works on meta tensors too (only names and shapes are compared).
    """
    common.check_family(state_dict, "retok", "a ReTok")
    renamed = []
    for key, value in state_dict.items():
        if key in DROPPED_BUFFERS:
            continue
        new = quantizer_key(key)
        for a, b in _RENAMES:
            new = new.replace(a, b)
        if new.rsplit(".", 1)[-1] in _POSITION_TABLES and value.ndim == 3 and value.shape[1] == 1:
            value = value.reshape(value.shape[0], value.shape[2])  # [L, 1, W] -> [L, W]
        renamed.append((key, new, value))
    out, unknown = common.place_keys(model.state_dict(), renamed)
    return common.finish_conversion(model, out, unknown, "ReTok")


@register_converter("retok")
def convert_retok(weights: Weights, config: Any = None, preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> ReTok:
    """Official ReTok weights (+ official config, or a preset name) -> ``ReTok`` in eval mode.

    ``weights``: a ``.pt``/``.safetensors`` path or a state dict (``ema``, else ``model``/
    ``state_dict``, unwrapped, as the official loader does). ``config``: ``VQVitModelPlusArgs``
    (dict, json or the official yaml); without it ``preset`` names ours (``"retok_ss"``,
    ``"retok_sb"``).
    """
    # the official loader prefers the EMA weights, then "model", then "state_dict"
    state = common.unwrap_state_dict(weights, ("ema", "model", "state_dict", "module"))
    model = common.target_model(ReTok, retok_config_from_official, config, preset, overrides,
                         "the official config (--config VQ_SS256.yaml) or a preset name "
                         "(--preset retok_ss | retok_sb)")
    mapped = convert_retok_state_dict(state, model)
    return common.load_converted(model, mapped, "official ReTok checkpoint", preset)
