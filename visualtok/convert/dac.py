"""Convert official DAC checkpoints (descript-audio-codec) into ``visualtok.audio.dac.DAC``.

Reads what ``DAC.save`` writes, ``{'state_dict', 'metadata': {'kwargs'}}`` (``torch.load`` with
``weights_only=True``), or a plain state dict (``.safetensors``/``.pth``/a dict). The architecture
comes from ``metadata['kwargs']``, else from ``config`` (a preset name such as ``"dac_44khz"`` or a
dict of DAC kwargs), else from the tensor shapes (widths, strides, codebooks; the sample rate of a
released configuration). Key map: encoder/decoder keys keep their names; each quantizer level's
weight-normed 1x1 ``in_proj``/``out_proj`` convs are folded (``g * v / |v|``) into our
``project_in``/``project_out`` Linear weights, ``codebook.weight`` -> ``embedding.weight``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..audio.dac import DAC, DAC_PRESETS, DACConfig
from ..config import config_from_dict
from ..hub import CheckpointError, read_torch_checkpoint
from . import read_official_state_dict, register_converter
from .common import finish_conversion, load_converted

__all__ = ["read_dac_checkpoint", "dac_config_for", "convert_dac_state_dict", "convert_dac"]

_LEVEL = re.compile(r"^quantizer\.quantizers\.(\d+)\.(in_proj|out_proj|codebook)\.(\w+)$")
_PROJ = {"in_proj": "project_in", "out_proj": "project_out"}
# (hop, codebooks) of the released models -> sample rate
_RELEASED_RATES = {(512, 9): 44100, (512, 18): 44100, (320, 32): 24000, (320, 12): 16000}


def read_dac_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, official kwargs or None) of an official ``.pth`` or a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DAC checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        obj = read_torch_checkpoint(path)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            kwargs = meta.get("kwargs")
            return obj["state_dict"], dict(kwargs) if isinstance(kwargs, dict) else None
    return read_official_state_dict(path), None


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"not a DAC state dict: {key} is missing")
    return tuple(state[key].shape)


def _infer_kwargs(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """DAC kwargs read from the tensor shapes (sample rate: a released configuration's)."""
    enc_blocks = sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"^encoder\.block\.(\d+)\.block\.4\.weight_v$", k))})
    dec_blocks = sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"^decoder\.model\.(\d+)\.block\.1\.weight_v$", k))})
    levels = {int(m.group(1)) for k in state if (m := _LEVEL.match(k))}
    if not enc_blocks or not dec_blocks or not levels:
        raise CheckpointError("not a DAC state dict: no encoder blocks, decoder blocks or "
                              "quantizer.quantizers.* keys")
    enc_rates = [_shape(state, f"encoder.block.{i}.block.4.weight_v")[-1] // 2 for i in enc_blocks]
    dec_rates = [_shape(state, f"decoder.model.{i}.block.1.weight_v")[-1] // 2 for i in dec_blocks]
    cb = _shape(state, "quantizer.quantizers.0.codebook.weight")
    kwargs = dict(
        encoder_dim=_shape(state, "encoder.block.0.weight_v")[0], encoder_rates=enc_rates,
        latent_dim=_shape(state, "quantizer.quantizers.0.in_proj.weight_v")[1],
        decoder_dim=_shape(state, "decoder.model.0.weight_v")[0], decoder_rates=dec_rates,
        n_codebooks=max(levels) + 1, codebook_size=cb[0], codebook_dim=cb[1],
    )
    return kwargs


def _released_rate(kwargs: dict[str, Any]) -> int:
    hop = 1
    for r in kwargs["encoder_rates"]:
        hop *= r
    rate = _RELEASED_RATES.get((hop, kwargs["n_codebooks"]))
    if rate is None:
        raise ValueError(f"cannot tell the sample rate of this DAC state dict (hop {hop}, "
                         f"{kwargs['n_codebooks']} codebooks, not a released model): pass "
                         "config={'sample_rate': ...} or the official .pth with its metadata")
    return rate


def dac_config_for(config: Any, state: dict[str, torch.Tensor],
                   kwargs: dict | None = None) -> DACConfig:
    """Our ``DACConfig``: official ``kwargs`` first, then ``config``, then the shapes."""
    if isinstance(config, DACConfig):
        return config.validate()
    base: dict[str, Any]
    if kwargs is not None:
        base = dict(kwargs)
    elif isinstance(config, str):
        if config not in DAC_PRESETS:
            raise ValueError(f"DAC config must be one of {sorted(DAC_PRESETS)} or a dict of DAC "
                             f"kwargs; got {config!r}")
        base = dict(DAC_PRESETS[config])
    elif isinstance(config, dict) or config is None:
        base = {**_infer_kwargs(state), **(config or {})}
        if "sample_rate" not in base:
            base["sample_rate"] = _released_rate(base)
    else:
        raise TypeError(f"DAC config must be a preset name or a dict; got "
                        f"{type(config).__name__}")
    if isinstance(base.get("codebook_dim"), list):
        dims = set(base["codebook_dim"])
        if len(dims) != 1:
            raise ValueError(f"DAC with a different codebook_dim per level is not supported; "
                             f"got {base['codebook_dim']}")
        base["codebook_dim"] = dims.pop()
    if "quantizer_dropout" in base:
        base["quantizer_dropout"] = float(base["quantizer_dropout"])
    return config_from_dict(DACConfig, base).validate()


def convert_dac_state_dict(state: dict[str, torch.Tensor], model: DAC) -> dict[str, torch.Tensor]:
    """Map official keys onto ``model``'s; ``CheckpointError`` lists any mismatch."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    proj: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _LEVEL.match(key)
        if m is None:
            (out if key in own else {})[key] = value
            if key not in own:
                unknown.append(key)
            continue
        level, part, leaf = m.groups()
        if part == "codebook" and leaf == "weight":
            out[f"quantizer.levels.{level}.embedding.weight"] = value
        elif part in _PROJ and leaf in ("weight_g", "weight_v", "bias"):
            proj.setdefault(f"quantizer.levels.{level}.{_PROJ[part]}", {})[leaf] = value
        else:
            unknown.append(key)
    for name, parts in proj.items():
        if "bias" in parts:
            out[f"{name}.bias"] = parts["bias"]
        if "weight_g" in parts and "weight_v" in parts:
            w = torch._weight_norm(parts["weight_v"].float(), parts["weight_g"].float(), 0)
            out[f"{name}.weight"] = w.squeeze(-1).to(parts["weight_v"].dtype)
    return finish_conversion(own, out, unknown, "DAC")


@register_converter("dac")
def convert_dac(
    weights: str | Path | dict[str, torch.Tensor], config: Any = None, preset: str | None = None
) -> DAC:
    """Official DAC weights (``.pth`` with metadata, safetensors or a state dict) -> ``DAC``."""
    kwargs = None
    if isinstance(weights, (str, Path)):
        state, kwargs = read_dac_checkpoint(weights)
    elif isinstance(weights, dict):
        state = weights
        if isinstance(state.get("state_dict"), dict):
            meta = state.get("metadata") or {}
            kwargs = meta.get("kwargs") if isinstance(meta, dict) else None
            state = state["state_dict"]
    else:
        raise TypeError(f"weights must be a path or a state dict; got {type(weights).__name__}")
    if config is None and kwargs is None and preset in DAC_PRESETS:
        config = preset
    model = DAC(dac_config_for(config, state, kwargs))
    mapped = convert_dac_state_dict(state, model)
    return load_converted(model, mapped, "official DAC checkpoint", preset)
