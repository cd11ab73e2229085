"""Strict dataclass configs: typed, bounded fields; dict/YAML <-> dataclass, unknown keys rejected.

Every model, quantizer and training recipe is configured by a ``@dataclass`` that subclasses
``Config``. Configs travel as plain dicts (``config.json`` inside checkpoints, YAML files under
``configs/``). One mechanism checks them, at construction (``__post_init__``) and again in
``validate()``:

* each field's value must match its annotation: ``int`` (not ``bool``, not ``8.0``), ``float``
  (an int is widened; NaN and infinity are refused), ``bool``, ``str``, ``Literal[...]`` choices,
  ``X | None``, ``tuple[X, ...]`` / ``tuple[X, Y]`` (lists are accepted), ``dict``, and nested
  configs (a mapping is converted). A mismatch is a ``TypeError`` naming the field and the
  expected form;
* ``Annotated[X, Range(...)]`` adds bounds, checked after the type (a ``ValueError``). The common
  ones have names: ``PositiveInt``, ``NonNegativeInt``, ``PositiveFloat``, ``NonNegativeFloat``,
  ``UnitFloat`` ([0, 1]), ``OpenUnitFloat`` ((0, 1), e.g. an EMA decay), ``Radix`` (an int >= 2);
* cross-field rules live in the class's ``validate()``, which calls ``super().validate()`` first.

``config_from_dict`` maps a dict onto a dataclass one to one: an unknown key is a ``ValueError``
that names it and lists the valid keys, so a typo never silently falls back to a default. Errors
name the file and the path of the offending entry (``configs/x.yaml: trainer.ckpt_every must be an
integer >= 1; got 0 (int)``). ``check_value`` applies the same rules to a function argument.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "Config",
    "Range",
    "PositiveInt",
    "NonNegativeInt",
    "PositiveFloat",
    "NonNegativeFloat",
    "UnitFloat",
    "OpenUnitFloat",
    "Radix",
    "check_value",
    "config_from_dict",
    "config_to_dict",
    "load_yaml",
    "load_json",
    "load_config",
]


@dataclass(frozen=True)
class Range:
    """Declarative bounds of a number, or of a tuple's length: ``Annotated[int, Range(ge=1)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, v: float) -> bool:
        return not (
            (self.ge is not None and not v >= self.ge)
            or (self.gt is not None and not v > self.gt)
            or (self.le is not None and not v <= self.le)
            or (self.lt is not None and not v < self.lt)
        )

    def describe(self) -> str:
        lo = hi = ""
        if self.ge is not None or self.gt is not None:
            lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
        if self.le is not None or self.lt is not None:
            hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})"
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}"
        return f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}"


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
Radix = Annotated[int, Range(ge=2)]  # codebook sizes, levels, bins: at least two values
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
UnitFloat = Annotated[float, Range(ge=0, le=1)]  # probabilities, fractions
OpenUnitFloat = Annotated[float, Range(gt=0, lt=1)]  # EMA decays, Adam betas

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(tp: Any) -> str:
    """Human form of an annotation, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, extras = args[0], [a for a in args[1:] if isinstance(a, Range)]
        suffix = "".join(f" {r.describe()}" for r in extras)
        if typing.get_origin(base) is tuple:
            return f"{_describe(base)} whose length is{suffix}"
        return _describe(base) + suffix
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "one of " + " | ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(_describe(args[0]))}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_plural(_describe(args[0]))}" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__} (or a mapping of its fields)"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(desc: str) -> str:
    for article in ("an ", "a "):
        if desc.startswith(article):
            head, _, rest = desc[len(article):].partition(" ")
            return f"{head}s {rest}".strip()
    return desc


def _got(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_value(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it normalised (list -> tuple, int -> float,
    mapping -> nested config). ``TypeError`` for a wrong type, ``ValueError`` for a bound or a
    choice; both name ``where`` and the expected form."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object or isinstance(tp, TypeVar):
        return value
    if origin is Annotated:
        value = check_value(args[0], value, where)
        for r in args[1:]:
            if isinstance(r, Range):
                measured = len(value) if isinstance(value, tuple) else value
                if not r.holds(measured):
                    raise ValueError(f"{where} must be {_describe(tp)}; got {_got(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[Exception] = []
        for alt in (a for a in args if a is not type(None)):
            try:
                return check_value(alt, value, where)
            except (TypeError, ValueError) as e:
                errors.append(e)
        if len(errors) == 1:  # X | None: X's own message is the most precise
            raise errors[0]
        raise TypeError(f"{where} must be {_describe(tp)}; got {_got(value)}")
    if origin is typing.Literal:
        if value not in args or type(value) not in {type(a) for a in args}:
            raise ValueError(f"{where} must be {_describe(tp)}; got {_got(value)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value.validate() if isinstance(value, Config) else value
        if isinstance(value, dict):
            return config_from_dict(tp, value, where=where)
        raise TypeError(f"{where} must be {_describe(tp)}; got {_got(value)}")
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be {_describe(tp)}; got {_got(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"{where} must be {_describe(tp)}; got {_got(value)}")
            pairs = enumerate(zip(args, value))
            items = [check_value(a, v, f"{where}[{i}]") for i, (a, v) in pairs]
        else:
            item = args[0] if args else Any
            items = [check_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be a mapping; got {_got(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false; got {_got(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where} must be an integer; got {_got(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where} must be a number; got {_got(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number; got {_got(value)}")
        return float(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TypeError(f"{where} must be {_describe(tp)}; got {_got(value)}")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


class Config:
    """Base of every config dataclass: fields are checked against their annotations (see the
    module docstring) when the config is built and by ``validate()``.

    Subclasses put cross-field rules in ``validate()`` (calling ``super().validate()`` first) and
    return ``self``. Checked values are normalised in place (lists become tuples, ints floats).
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self):
        hints = _hints(type(self))
        name = type(self).__name__
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = check_value(hints.get(f.name, Any), getattr(self, f.name), f"{name}.{f.name}")
            object.__setattr__(self, f.name, value)
        return self


def config_from_dict(
    cls: type[T], data: dict[str, Any], where: str | None = None, source: str | None = None
) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ValueError``.

    Nested dataclass fields accept nested dicts; tuples accept lists (as YAML/JSON give them).
    Every value is checked against its annotation. Errors name the entry by its dotted path from
    ``where`` (default: the class name; ``""`` for a top-level file section) and start with
    ``source`` (e.g. the YAML file) when given.
    """
    if source is not None:
        try:
            return config_from_dict(cls, data, "" if where is None else where)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{source}: {e}") from None
    where = cls.__name__ if where is None else where
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise TypeError(f"{label}: expected a mapping of {cls.__name__} fields, got {_got(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ValueError(
            f"{label}: unknown config key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    hints = _hints(cls)
    kwargs = {
        k: check_value(hints.get(k, Any), v, f"{where}.{k}" if where else k)
        for k, v in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a cross-field rule: say which entry it came from
        if label == cls.__name__ or str(e).startswith(label):
            raise
        raise type(e)(f"{label}: {e}") from None


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
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a YAML (or JSON) config file: {_parse_error(e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: a config file must hold a mapping (key: value) at top level; "
            f"got {type(data).__name__}"
        )
    return data


def load_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing file or one that is not JSON is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a JSON {what}: {_parse_error(e)}") from None


def _parse_error(e: Exception) -> str:
    """One line saying what a parser found wrong and where."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} (line {e.lineno}, column {e.colno})"
    return " ".join(str(e).split()) or type(e).__name__


def load_config(cls: type[T], path: str | Path) -> T:
    """YAML file -> dataclass ``cls`` (strict)."""
    return config_from_dict(cls, load_yaml(path), source=str(path))
