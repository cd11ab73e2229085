"""Official-checkpoint converters, one module per family (key maps + shape checks).

Each converter module registers ``fn(weights, config=None, preset=None) -> model`` under its family
name with ``@register_converter`` (``visualtok.registry.CONVERTERS``). ``convert_checkpoint(family,
...)`` dispatches; the CLI's ``visualtok convert <family> <checkpoint> --config <cfg> --out <dir>``
calls it and saves the result. Converters consume every official key: an unmapped or missing key is
an error, never ``strict=False``. Official files are read with ``hub.read_official_state_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..hub import read_official_state_dict
from ..registry import CONVERTERS, register_converter

__all__ = [
    "register_converter",
    "convert_checkpoint",
    "list_converters",
    "read_official_state_dict",
]


def list_converters() -> list[str]:
    return CONVERTERS.names()


def convert_checkpoint(
    family: str,
    weights: str | Path | dict,
    config: Any = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """Convert an official checkpoint of ``family`` into a visualtok model (eval mode).

    ``overrides`` (our config field names) set what the official config does not record, e.g.
    widths the official code hard-codes.
    """
    if family not in CONVERTERS:
        raise ValueError(f"no converter for {family!r}; available: {list_converters()}")
    if overrides:
        return CONVERTERS.get(family)(weights, config=config, preset=preset, overrides=overrides)
    return CONVERTERS.get(family)(weights, config=config, preset=preset)
