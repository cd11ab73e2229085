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

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from ..config import load_yaml
from ..hub import (
    CheckpointError,
    describe_state_dict_mismatch,
    load_state_dict_strict,
    read_official_state_dict,
)
from ..image.vqgan import VQGAN, VQGANConfig, vqgan_config
from ..registry import register_converter

__all__ = [
    "vqgan_config_from_official",
    "convert_vqgan_state_dict",
    "convert_vqgan",
    "merge_spatial_attention",
    "detect_family",
    "unwrap_state_dict",
    "read_official_config",
]

log = logging.getLogger(__name__)

# ModelArgs fields of LlamaGen's vq_model.py
_MODEL_ARGS = {
    "codebook_size", "codebook_embed_dim", "codebook_l2_norm", "codebook_show_usage",
    "commit_loss_beta", "entropy_loss_ratio", "encoder_ch_mult", "decoder_ch_mult", "z_channels",
    "dropout_p",
}
_ATTN_PART = re.compile(r"^(?P<block>.+)\.(?P<part>q|k|v|proj_out)\.(?P<kind>weight|bias)$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
DROPPED_BUFFERS = ("quantize.codebook_used",)


def read_official_config(config: Any, what: str) -> dict[str, Any]:
    """A dict, or a ``.json``/``.yaml`` path, -> dict."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"official {what} config not found: {path}")
        config = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path)
    if not isinstance(config, dict):
        raise TypeError(f"official {what} config must be a dict or a path; got "
                        f"{type(config).__name__}")
    return config


def unwrap_state_dict(
    weights: Any, wrappers: tuple[str, ...] = ("state_dict", "model", "module")
) -> dict[str, torch.Tensor]:
    """A path (read weights-only) or a state dict, with ``wrappers`` (first match wins) and
    ``module.``/``_orig_mod.`` prefixes removed."""
    if isinstance(weights, (str, Path)):
        state = read_official_state_dict(weights, wrappers)
    elif isinstance(weights, dict):
        state = weights
        for key in wrappers:
            if key in state and isinstance(state[key], dict):
                state = state[key]
    else:
        raise TypeError(f"weights must be a path or a state dict; got {type(weights).__name__}")
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def detect_family(state: dict[str, torch.Tensor]) -> str | None:
    """Which official family a state dict looks like: ``"retok"``, ``"vqgan"``, ``"titok"``."""
    keys = set(state)
    if any(k.startswith(("s2to1encoder.", "s1to2decoder.")) for k in keys):
        return "retok"
    if "latent_tokens" in keys or any(k.startswith("encoder.transformer.") for k in keys):
        return "titok"
    if "encoder.conv_in.weight" in keys and "quant_conv.weight" in keys:
        return "vqgan"
    return None


def check_family(state: dict[str, torch.Tensor], family: str, name: str) -> None:
    """``CheckpointError`` naming the right converter when ``state`` is another family's."""
    found = detect_family(state)
    if found != family:
        what = f"a {found} checkpoint" if found else "not a checkpoint of any known family"
        hint = f": use `visualtok convert {found}`" if found else ""
        raise CheckpointError(f"these weights are {what}, not {name}{hint} "
                              f"(first keys: {sorted(state)[:3]})")


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


def finish_conversion(model: torch.nn.Module, mapped: dict, unknown: list[str], name: str) -> dict:
    """Raise ``CheckpointError`` unless ``mapped`` matches ``model`` key for key and shape."""
    problems = describe_state_dict_mismatch(model.state_dict(), mapped, unexpected=unknown)
    if problems:
        raise CheckpointError(
            f"official {name} checkpoint does not match the configured model (wrong config for "
            f"these weights?): {problems} (unexpected keys carry their official names)"
        )
    return mapped


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
    merged, unknown = merge_spatial_attention(state)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in merged.items():
        new = "quantizer." + key[len("quantize."):] if key.startswith("quantize.") else key
        if new in own:
            out[new] = value
        else:
            unknown.append(key)
    return finish_conversion(model, out, unknown, "LlamaGen VQGAN")


@register_converter("vqgan")
def convert_vqgan(
    weights: str | Path | dict[str, torch.Tensor],
    config: Any = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> VQGAN:
    """Official LlamaGen VQ weights (+ ``ModelArgs``, or a preset name) -> ``VQGAN`` in eval mode.

    ``weights``: a ``.pt``/``.safetensors`` path or a state dict (``{"model": ...}`` unwrapped).
    ``config``: the official ``ModelArgs`` as a dict/json/yaml; without it ``preset`` names ours
    (``"vqgan_16"``, ``"vqgan_8"``). ``overrides`` replace fields of the resulting config.
    """
    state = unwrap_state_dict(weights)
    if config is not None:
        model = VQGAN(vqgan_config_from_official(config, overrides))
    elif preset is not None:
        from ..registry import create_model

        model = create_model(preset, **(overrides or {}))
        if not isinstance(model, VQGAN):
            raise ValueError(f"preset {preset!r} is not a VQGAN model")
    else:
        raise ValueError("convert_vqgan needs the official ModelArgs (--config) or a preset name "
                         "(--preset vqgan_16 | vqgan_8)")
    mapped = convert_vqgan_state_dict(state, model)
    load_state_dict_strict(model, mapped, source="official LlamaGen VQGAN checkpoint")
    model.model_name = preset
    return model.eval()
