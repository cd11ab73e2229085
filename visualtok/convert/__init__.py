"""Official-checkpoint converters, one module per family (key maps + shape checks).

Each converter module registers ``fn(weights, config=None, preset=None) -> model`` under its family
name with ``@register_converter``. ``convert_checkpoint(family, ...)`` dispatches; the CLI's
``visualtok convert <family> <checkpoint> --config <cfg> --out <dir>`` calls it and saves the
result. Converters consume every official key: an unmapped or missing key is an error, never
``strict=False``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "register_converter",
    "convert_checkpoint",
    "list_converters",
    "read_official_state_dict",
]

_CONVERTERS: dict[str, Callable[..., nn.Module]] = {}
_CONVERTER_MODULES = {
    "titok": "visualtok.convert.titok",
    "flextok": "visualtok.convert.flextok",
}


def register_converter(family: str):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _CONVERTERS[family] = fn
        return fn

    return wrap


def list_converters() -> list[str]:
    return sorted(_CONVERTER_MODULES)


def convert_checkpoint(
    family: str, weights: str | Path | dict, config: Any = None, preset: str | None = None
) -> nn.Module:
    """Convert an official checkpoint of ``family`` into a visualtok model (eval mode)."""
    if family not in _CONVERTER_MODULES:
        raise ValueError(f"no converter for {family!r}; available: {list_converters()}")
    importlib.import_module(_CONVERTER_MODULES[family])
    return _CONVERTERS[family](weights, config=config, preset=preset)


def read_official_state_dict(path: str | Path) -> dict:
    """Read an official ``.bin``/``.pt``/``.pth``/``.safetensors`` state dict safely.

    Pickles are read with ``weights_only=True`` only. Common wrappers (``state_dict``, ``model``,
    ``module``) are unwrapped.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"{path} could not be read as a weights-only torch checkpoint: {e}"
            ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return sd
