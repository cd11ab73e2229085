"""Helpers every official-checkpoint converter shares: reading the official config and weights,
recognising another family's checkpoint, building the model to fill, and loading it strictly.

A converter maps official keys onto our model's and hands the result to ``finish_conversion``,
which accepts it only when it matches the model key for key and shape (no ``strict=False``
anywhere), then ``load_converted`` loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..config import load_json, load_yaml
from ..hub import (
    CheckpointError,
    describe_state_dict_mismatch,
    load_state_dict_strict,
    read_official_state_dict,
)

__all__ = [
    "read_official_config",
    "unwrap_state_dict",
    "detect_family",
    "check_family",
    "place_keys",
    "finish_conversion",
    "target_model",
    "load_converted",
]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
M = TypeVar("M", bound=nn.Module)
Weights = str | Path | dict[str, torch.Tensor]  # what every converter takes as ``weights``


def read_official_config(config: Any, what: str) -> dict[str, Any]:
    """A dict, or a ``.json``/``.yaml`` path, -> dict."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"official {what} config not found: {path}")
        is_json = path.suffix == ".json"
        config = load_json(path, f"official {what} config") if is_json else load_yaml(path)
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


def place_keys(
    own: Mapping[str, torch.Tensor], renamed: Iterable[tuple[str, str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official ``(key, our key, value)`` triples -> (``{our key: value}`` for the keys ``own``
    has, the official keys of the rest)."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, new, value in renamed:
        if new in own:
            out[new] = value
        else:
            unknown.append(key)
    return out, unknown


def finish_conversion(
    own: nn.Module | Mapping[str, torch.Tensor], mapped: dict, unknown: list[str], name: str,
    hint: str = "wrong config for these weights?",
) -> dict:
    """Raise ``CheckpointError`` unless ``mapped`` matches ``own`` (a model or its state dict) key
    for key and shape; ``unknown`` are official keys nothing consumed."""
    if isinstance(own, nn.Module):
        own = own.state_dict()
    problems = describe_state_dict_mismatch(own, mapped, unexpected=unknown)
    if problems:
        raise CheckpointError(
            f"official {name} checkpoint does not match the configured model ({hint}): {problems} "
            "(unexpected keys carry their official names)"
        )
    return mapped


def target_model(
    cls: type[M], from_official: Callable[[Any, dict | None], Any], config: Any, preset: str | None,
    overrides: dict[str, Any] | None, needs: str,
) -> M:
    """The ``cls`` model a conversion fills: built from the official ``config`` (read by
    ``from_official``), else from our ``preset``, which must be a ``cls``. ``needs`` says what to
    pass when neither is given."""
    if config is not None:
        return cls(from_official(config, overrides))
    if preset is not None:
        from ..registry import create_model

        model = create_model(preset, **(overrides or {}))
        if not isinstance(model, cls):
            raise ValueError(f"preset {preset!r} is not a {cls.__name__} model")
        return model
    raise ValueError(f"converting to {cls.__name__} needs {needs}")


def load_converted(model: M, mapped: dict, source: str, name: str | None) -> M:
    """Load converted weights strictly, name the model, and return it in eval mode."""
    load_state_dict_strict(model, mapped, source=source)
    model.model_name = name
    return model.eval()
