"""Strict dataclass configs: dict/YAML <-> dataclass with unknown keys rejected.

Every model, quantizer and training recipe is configured by a ``@dataclass``. Configs travel as
plain dicts (``config.json`` inside checkpoints, YAML files under ``configs/``).
``config_from_dict`` maps a dict onto a dataclass one to one: an unknown key is a ``ValueError``
that names it and lists the valid keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = ["config_from_dict", "config_to_dict", "load_yaml", "load_config"]


def _unwrap_optional(tp: Any) -> Any:
    """``Optional[X]`` / ``X | None`` -> ``X``; anything else unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(tp: Any, value: Any, where: str) -> Any:
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise TypeError(
                f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}"
            )
        return config_from_dict(tp, value, where=where)
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ValueError``.

    Nested dataclass fields accept nested dicts; tuples accept lists (as YAML/JSON give them).
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: unknown config key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints.get(k, Any), v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> JSON-able dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return plain(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping at top level")
    return data


def load_config(cls: type[T], path: str | Path) -> T:
    """YAML file -> dataclass ``cls`` (strict)."""
    return config_from_dict(cls, load_yaml(path), where=str(path))
