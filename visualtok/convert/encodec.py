"""Convert official EnCodec checkpoints (PyPI ``encodec``, facebookresearch/encodec) into
``visualtok.audio.encodec.Encodec``.

``config`` names the architecture: ``"encodec_24khz"`` / ``"encodec_48khz"`` (our presets), a dict
of ``EncodecConfig`` fields, or None to read it from the weights (GroupNorm keys mean the 48 kHz
model; channels and levels come from the tensor shapes). Key map:

* ``{encoder,decoder}.model.N`` -> ``{encoder,decoder}.layers.N`` (same layer order);
* ``*.conv.conv.*`` / ``*.convtr.convtr.*`` -> ``*.conv.*`` / ``*.convtr.*`` (``weight_g``,
  ``weight_v``, ``bias``, or ``weight`` when the model uses GroupNorm); ``*.conv.norm.*`` /
  ``*.convtr.norm.*`` -> ``*.norm.*``;
* ``quantizer.vq.layers.i._codebook.{embed, embed_avg, cluster_size, inited}`` ->
  ``quantizer.levels.i.{embedding.weight, embed_avg, cluster_size, initted}``.

Every official key must be consumed and every model key provided; shapes must agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..audio.encodec import ENCODEC_24KHZ, ENCODEC_48KHZ, Encodec, EncodecConfig
from ..config import config_from_dict
from ..hub import CheckpointError
from . import read_official_state_dict, register_converter
from .common import finish_conversion, load_converted

__all__ = ["encodec_config_for", "convert_encodec_state_dict", "convert_encodec"]

_PRESETS = {"encodec_24khz": ENCODEC_24KHZ, "encodec_48khz": ENCODEC_48KHZ}
_LEVEL = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(\w+)$")
_LEVEL_KEYS = {"embed": "embedding.weight", "embed_avg": "embed_avg",
               "cluster_size": "cluster_size", "inited": "initted"}


def _num_levels(state: dict[str, torch.Tensor]) -> int:
    levels = {int(m.group(1)) for k in state if (m := _LEVEL.match(k))}
    if not levels:
        raise CheckpointError("not an EnCodec state dict: no quantizer.vq.layers.*._codebook keys")
    return max(levels) + 1


def encodec_config_for(config: Any, state: dict[str, torch.Tensor]) -> EncodecConfig:
    """Our ``EncodecConfig`` for ``config`` (preset name, dict, path, None) and these weights."""
    if isinstance(config, EncodecConfig):
        return config
    if isinstance(config, (str, Path)) and str(config) not in _PRESETS:
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"EnCodec config must be one of {sorted(_PRESETS)}, a dict of "
                             f"EncodecConfig fields or a JSON file; got {config!r}")
        config = json.loads(path.read_text())
    if config is None:
        grouped = any(k.endswith(".conv.norm.weight") for k in state)
        base = dict(ENCODEC_48KHZ if grouped else ENCODEC_24KHZ)
        first = state.get("encoder.model.0.conv.conv.weight_v",
                          state.get("encoder.model.0.conv.conv.weight"))
        if first is not None:
            base["channels"] = int(first.shape[1])
    elif isinstance(config, str):
        base = dict(_PRESETS[config])
    elif isinstance(config, dict):
        preset = config.get("preset")
        base = {**(_PRESETS[preset] if preset in _PRESETS else {}),
                **{k: v for k, v in config.items() if k != "preset"}}
    else:
        raise TypeError(f"EnCodec config must be a preset name, dict or path; got "
                        f"{type(config).__name__}")
    cfg = config_from_dict(EncodecConfig, base)
    cfg.validate()
    levels = _num_levels(state)
    if levels != cfg.quantizer.num_quantizers:
        cfg.quantizer.num_quantizers = levels
    return cfg


def convert_encodec_state_dict(
    state: dict[str, torch.Tensor], model: Encodec
) -> dict[str, torch.Tensor]:
    """Map official keys onto ``model``'s; ``CheckpointError`` lists any mismatch."""
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        m = _LEVEL.match(key)
        if m is not None:
            if m.group(2) not in _LEVEL_KEYS:
                unknown.append(key)
                continue
            new = f"quantizer.levels.{m.group(1)}.{_LEVEL_KEYS[m.group(2)]}"
            if m.group(2) == "inited":
                value = value.reshape(()).bool()
        else:
            new = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", key)
            new = new.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".convtr.")
            new = new.replace(".conv.norm.", ".norm.").replace(".convtr.norm.", ".norm.")
        if new not in own:
            unknown.append(key)
        else:
            out[new] = value
    return finish_conversion(own, out, unknown, "EnCodec")


@register_converter("encodec")
def convert_encodec(
    weights: str | Path | dict[str, torch.Tensor], config: Any = None, preset: str | None = None
) -> Encodec:
    """Official EnCodec weights (``.th`` path or state dict) -> ``Encodec`` in eval mode."""
    if isinstance(weights, (str, Path)):
        state = read_official_state_dict(weights)
    elif isinstance(weights, dict):
        state = weights
    else:
        raise TypeError(f"weights must be a path or a state dict; got {type(weights).__name__}")
    if config is None and preset in _PRESETS:
        config = preset
    model = Encodec(encodec_config_for(config, state))
    mapped = convert_encodec_state_dict(state, model)
    name = preset or (config if isinstance(config, str) else None)
    return load_converted(model, mapped, "official EnCodec checkpoint", name)
