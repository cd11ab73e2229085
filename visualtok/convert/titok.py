"""Convert official TiTok checkpoints (bytedance/1d-tokenizer) into ``visualtok.image.titok.TiTok``.

The official model is configured by an OmegaConf tree; we read ``model.vq_model`` and
``dataset.preprocessing.crop_size`` from it (a dict, a hub ``config.json`` or a training YAML).
Key map (everything else keeps its name):

* ``*.attn.in_proj_weight|bias`` -> ``*.attn.qkv.weight|bias`` (``nn.MultiheadAttention``'s fused
  q, k, v rows are already in our ``qkv`` order); ``*.attn.out_proj.*`` -> ``*.attn.proj.*``;
* ``quantize.*`` -> ``quantizer.*`` (VQ codebook ``embedding.weight``, kept raw as upstream).

Every official key must be consumed and every model key provided; shapes must agree. The only keys
not read from the checkpoint are our quantizer's own buffers that the official model has no
counterpart for (e.g. the PTQ range of a VAE checkpoint), which keep their configured values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..image.titok import VIT_SIZES, TiTok, TiTokConfig, titok_config
from ..registry import register_converter
from .common import (
    Weights,
    finish_conversion,
    load_converted,
    read_official_config,
    target_model,
    unwrap_state_dict,
)

__all__ = [
    "titok_config_from_official",
    "convert_titok_state_dict",
    "convert_titok",
    "convert_titok_to_dir",
]

log = logging.getLogger(__name__)

_RENAMES = (
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def titok_config_from_official(config: Any, overrides: dict[str, Any] | None = None) -> TiTokConfig:
    """Official OmegaConf tree (``model.vq_model`` + ``dataset.preprocessing.crop_size``) -> ours.

    Also accepts ``{"vq_model": {...}, "crop_size": 256}``. ``overrides`` (our field names) replace
    derived values, e.g. shrunk widths of a test fixture.
    """
    cfg = read_official_config(config, "TiTok")
    if "model" in cfg:
        vq = cfg["model"].get("vq_model")
        crop = cfg.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256)
    else:
        vq, crop = cfg.get("vq_model"), cfg.get("crop_size", 256)
    if not isinstance(vq, dict):
        raise ValueError("official TiTok config needs model.vq_model (a mapping)")
    for key in ("vit_enc_model_size", "vit_dec_model_size", "num_latent_tokens", "token_size"):
        if key not in vq:
            raise ValueError(f"official TiTok config: model.vq_model.{key} is missing")
    if vq.get("vit_enc_patch_size", 16) != vq.get("vit_dec_patch_size", 16):
        raise ValueError("encoder and decoder patch sizes must be equal")
    mode = vq.get("quantize_mode", "vq")
    legacy = bool(vq.get("is_legacy", True))
    finetune = bool(vq.get("finetune_decoder", True))
    if mode not in ("vq", "vae"):
        raise ValueError(f"official TiTok quantize_mode must be 'vq' or 'vae'; got {mode!r}")
    for key in ("vit_enc_model_size", "vit_dec_model_size"):
        if vq[key] not in VIT_SIZES:
            raise ValueError(f"TiTok {key} must be in {sorted(VIT_SIZES)}; got {vq[key]!r}")
    ew, ed, eh = VIT_SIZES[vq["vit_enc_model_size"]]
    dw, dd, dh = VIT_SIZES[vq["vit_dec_model_size"]]
    base: dict[str, Any] = dict(
        image_size=int(crop), patch_size=int(vq.get("vit_enc_patch_size", 16)),
        encoder_width=ew, encoder_depth=ed, encoder_heads=eh,
        decoder_width=dw, decoder_depth=dd, decoder_heads=dh,
        num_latent_tokens=int(vq["num_latent_tokens"]), token_size=int(vq["token_size"]),
        is_legacy=legacy, mode=mode,
        decoder_head="proxy_codes" if legacy else "pixel", pixel_decoder=legacy and finetune,
    )
    if mode == "vq":
        base["quantizer"] = dict(
            type="vq", codebook_size=int(vq.get("codebook_size", 4096)),
            l2_normalize=bool(vq.get("use_l2_norm", True)),
            beta=float(vq.get("commitment_cost", 0.25)),
        )
    else:
        base["quantizer"] = dict(type="ptq", bins=64)
    return titok_config(base, overrides or {})


def convert_titok_state_dict(
    state_dict: dict[str, torch.Tensor], model: TiTok
) -> dict[str, torch.Tensor]:
    """Map official keys onto ``model``'s; raise ``CheckpointError`` listing any mismatch.

    Works on meta tensors too (only names and shapes are compared). Our quantizer's buffers with no
    official counterpart are taken from ``model``.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        new = key
        for prefix in _WRAPPER_PREFIXES:
            if new.startswith(prefix):
                new = new[len(prefix):]
        if new.startswith("quantize."):
            new = "quantizer." + new[len("quantize."):]
        for a, b in _RENAMES:
            new = new.replace(a, b)
        if new not in own:
            unknown.append(key)
        else:
            out[new] = value
    param_names = {n for n, _ in model.named_parameters()}
    filled = [k for k in own
              if k not in out and k.startswith("quantizer.") and k not in param_names]
    for k in filled:
        out[k] = own[k]
    if filled:
        log.info("TiTok conversion: kept configured quantizer buffers %s", filled)
    return finish_conversion(own, out, unknown, "TiTok")


@register_converter("titok")
def convert_titok(weights: Weights, config: Any = None, preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> TiTok:
    """Official TiTok weights (+ official config, or a preset name) -> ``TiTok`` in eval mode.

    ``weights``: a ``.bin``/``.pt``/``.safetensors`` path or a state dict (hub wrappers unwrapped).
    ``config``: the official config (dict, ``config.json`` or YAML); without it ``preset`` names our
    preset (e.g. ``"titok_s128"``). ``overrides`` replace fields of the resulting ``TiTokConfig``.
    """
    state = unwrap_state_dict(weights)
    model = target_model(TiTok, titok_config_from_official, config, preset, overrides,
                         "the official config or a preset name")
    mapped = convert_titok_state_dict(state, model)
    return load_converted(model, mapped, "official TiTok checkpoint", preset)


def convert_titok_to_dir(
    weights: str | Path | dict[str, torch.Tensor],
    out_dir: str | Path,
    config: Any = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Convert and write a visualtok checkpoint directory (``visualtok.load(out_dir)`` opens it)."""
    model = convert_titok(weights, config=config, preset=preset, overrides=overrides)
    return model.save_pretrained(out_dir)
