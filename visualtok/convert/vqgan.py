"""Convert official LlamaGen VQGAN checkpoints (FoundationVision/LlamaGen ``VQModel``) into
``visualtok.image.vqgan.VQGAN``.

The official model is configured by ``ModelArgs`` (``codebook_size``, ``codebook_embed_dim``,
``encoder_ch_mult``, ``z_channels``, ...); the CNN base width (128) and the number of ResnetBlocks
(2) are hard-coded upstream and come in as overrides in our field names (``channels``,
``num_res_blocks``). Released checkpoints (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt``) hold the weights
under ``"model"``. Key map (everything else keeps its name):

* ``<block>.q|k|v.weight|bias`` (1x1 convs) -> one ``<block>.attn.qkv.weight|bias`` (rows q, k, v),
  ``<block>.proj_out.*`` -> ``<block>.attn.proj.*``: the spatial attention runs through the
  library's one ``Attention`` block;
* ``quantize.embedding.weight`` -> ``quantizer.embedding.weight`` (raw rows; l2-normalised at lookup
  as upstream);
* ``quantize.codebook_used`` (a training-time ring buffer of recent code ids, for logging usage) is
  read and dropped: it never affects an output.

Every official key must be consumed and every model key provided, with equal shapes; otherwise a
``CheckpointError`` lists the unexpected, missing and mis-shaped keys. A checkpoint of another
family (ReTok, TiTok) is recognised and named.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from ..image.vqgan import VQGAN, VQGANConfig, vqgan_config
from ..registry import register_converter
from .common import (
    Weights,
    check_family,
    finish_conversion,
    load_converted,
    place_keys,
    read_official_config,
    target_model,
    unwrap_state_dict,
)

__all__ = [
    "vqgan_config_from_official",
    "convert_vqgan_state_dict",
    "convert_vqgan",
    "merge_spatial_attention",
]

log = logging.getLogger(__name__)

# ModelArgs fields of LlamaGen's vq_model.py
_MODEL_ARGS = {
    "codebook_size", "codebook_embed_dim", "codebook_l2_norm", "codebook_show_usage",
    "commit_loss_beta", "entropy_loss_ratio", "encoder_ch_mult", "decoder_ch_mult", "z_channels",
    "dropout_p",
}
_ATTN_PART = re.compile(r"^(?P<block>.+)\.(?P<part>q|k|v|proj_out)\.(?P<kind>weight|bias)$")
DROPPED_BUFFERS = ("quantize.codebook_used",)


def merge_spatial_attention(state: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Official ``q``/``k``/``v``/``proj_out`` 1x1-conv attention keys -> ``attn.qkv``/``attn.proj``
    (Linear weights). Returns the new dict and the official keys of incomplete q/k/v triples."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _ATTN_PART.match(key)
        if m is None:
            out[key] = value
            continue
        block, part, kind = m["block"], m["part"], m["kind"]
        if kind == "weight":
            value = value.reshape(value.shape[0], -1)  # [C, C, 1, 1] -> [C, C]
        if part == "proj_out":
            out[f"{block}.attn.proj.{kind}"] = value
        else:
            groups.setdefault((block, kind), {})[part] = value
    incomplete = []
    for (block, kind), parts in groups.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:
            missing = sorted({"q", "k", "v"} - set(parts))
            incomplete += [f"{block}.{p}.{kind} (no {'/'.join(missing)} beside it)" for p in parts]
    return out, incomplete


def vqgan_config_from_official(config: Any, overrides: dict[str, Any] | None = None) -> VQGANConfig:
    """LlamaGen ``ModelArgs`` (a dict, ``{"model_args": {...}}`` or a json/yaml path) -> ours.

    ``overrides`` (our field names) set what upstream hard-codes: ``channels`` (128),
    ``num_res_blocks`` (2), and the nominal ``image_size`` (256).
    """
    cfg = read_official_config(config, "LlamaGen VQ")
    args = cfg.get("model_args", cfg)
    if not isinstance(args, dict):
        raise ValueError("official LlamaGen config: model_args must be a mapping")
    unknown = sorted(set(args) - _MODEL_ARGS)
    if unknown:
        raise ValueError(f"official LlamaGen ModelArgs: unknown field(s) {unknown}; "
                         f"known: {sorted(_MODEL_ARGS)}")
    if float(args.get("entropy_loss_ratio", 0.0)) != 0.0:
        log.warning("LlamaGen entropy_loss_ratio=%s is a training loss with no counterpart in "
                    "visualtok's VQ; it does not affect conversion", args["entropy_loss_ratio"])
    default = VQGANConfig()
    base: dict[str, Any] = dict(
        encoder_ch_mult=tuple(args.get("encoder_ch_mult", default.encoder_ch_mult)),
        decoder_ch_mult=tuple(args.get("decoder_ch_mult", default.decoder_ch_mult)),
        z_channels=int(args.get("z_channels", 256)), dropout=float(args.get("dropout_p", 0.0)),
        quantizer=dict(type="vq", dim=int(args.get("codebook_embed_dim", 8)),
                       codebook_size=int(args.get("codebook_size", 16384)),
                       l2_normalize=bool(args.get("codebook_l2_norm", True)),
                       beta=float(args.get("commit_loss_beta", 0.25))),
    )
    overrides = dict(overrides or {})
    if "image_size" not in overrides:  # the nominal size must be divisible by the factor
        base["image_size"] = max(256, 2 ** (len(base["encoder_ch_mult"]) - 1))
    return vqgan_config(base, overrides)


def convert_vqgan_state_dict(state_dict: dict[str, torch.Tensor], model: VQGAN) -> dict:
    """Map official keys onto ``model``'s; ``CheckpointError`` listing any mismatch.

    Works on meta tensors too (only names and shapes are compared).
    """
    check_family(state_dict, "vqgan", "a LlamaGen VQGAN")
    state = {k: v for k, v in state_dict.items() if k not in DROPPED_BUFFERS}
    merged, incomplete = merge_spatial_attention(state)
    renamed = ((key, quantizer_key(key), value) for key, value in merged.items())
    out, unknown = place_keys(model.state_dict(), renamed)
    return finish_conversion(model, out, incomplete + unknown, "LlamaGen VQGAN")


def quantizer_key(key: str) -> str:
    """Official ``quantize.*`` -> our ``quantizer.*`` (other keys unchanged)."""
    return "quantizer." + key[len("quantize."):] if key.startswith("quantize.") else key


@register_converter("vqgan")
def convert_vqgan(weights: Weights, config: Any = None, preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> VQGAN:
    """Official LlamaGen VQ weights (+ ``ModelArgs``, or a preset name) -> ``VQGAN`` in eval mode.

    ``weights``: a ``.pt``/``.safetensors`` path or a state dict (``{"model": ...}`` unwrapped).
    ``config``: the official ``ModelArgs`` as a dict/json/yaml; without it ``preset`` names ours
    (``"vqgan_16"``, ``"vqgan_8"``). ``overrides`` replace fields of the resulting config.
    """
    state = unwrap_state_dict(weights)
    model = target_model(VQGAN, vqgan_config_from_official, config, preset, overrides,
                         "the official ModelArgs (--config) or a preset name "
                         "(--preset vqgan_16 | vqgan_8)")
    mapped = convert_vqgan_state_dict(state, model)
    return load_converted(model, mapped, "official LlamaGen VQGAN checkpoint", preset)
