"""Model registry: ``@register_model`` presets, ``list_models``, ``create_model``, pretrained
records.

Two tables, both keyed by short names and never by import paths:

* **model classes** (``@register_model_class``): the classes a ``config.json`` may name. Loading a
  checkpoint looks the class up here, so a checkpoint can never make us import arbitrary code.
* **presets** (``@register_model``): functions ``preset(**overrides) -> model`` with an optional
  ``PretrainedRecord`` saying where official or shipped weights live and what they expect.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "PretrainedRecord",
    "ModelEntry",
    "register_model",
    "register_model_class",
    "get_model_class",
    "list_models",
    "create_model",
    "get_model_entry",
]


@dataclass(frozen=True)
class PretrainedRecord:
    """Where a preset's weights live and what they expect.

    ``format`` is ``"visualtok"`` for our own safetensors+config.json, or a converter family
    (e.g. ``"titok"``) for an official checkpoint that is converted on load.
    """

    hub_id: str | None = None  # e.g. "yucornetto/tokenizer_titok_s128_imagenet"
    filename: str = "model.safetensors"  # the file fetched from the hub / expected locally
    sha256: str | None = None  # hex digest of ``filename``; checked when present
    format: str = "visualtok"
    config_filename: str | None = None  # official config file fetched beside weights, if any
    input_size: tuple[int, ...] | None = None  # e.g. (256, 256)
    input_range: str = "[0, 1]"
    num_tokens: int | None = None
    vocab: str | None = None  # human readable, e.g. "4096 (VQ, 12-d, l2)"
    license: str | None = None
    paper: str | None = None
    notes: str = ""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # "image-tokenizer", "video-tokenizer", "audio-codec", "generator"
    pretrained: PretrainedRecord | None = None
    tags: tuple[str, ...] = field(default=())


_MODEL_CLASSES: dict[str, type[nn.Module]] = {}
_MODELS: dict[str, ModelEntry] = {}

# Modules whose import registers models. Imported lazily on first registry query so that
# ``import visualtok`` stays cheap and import cycles are impossible.
_MODEL_MODULES = (
    "visualtok.image.titok",
    "visualtok.video.titok3d",
    "visualtok.generate.gpt",
)
_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family not written yet must not break the others
            if e.name != mod:
                raise


def register_model_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: allow ``cls`` to be named by ``config.json`` ``model_class``."""
    name = cls.__name__
    if name in _MODEL_CLASSES and _MODEL_CLASSES[name] is not cls:
        raise ValueError(f"model class {name!r} registered twice")
    _MODEL_CLASSES[name] = cls
    return cls


def get_model_class(name: str) -> type[nn.Module]:
    _ensure_loaded()
    if name not in _MODEL_CLASSES:
        raise ValueError(
            f"unknown model class {name!r} in checkpoint config; "
            f"known classes: {sorted(_MODEL_CLASSES)}"
        )
    return _MODEL_CLASSES[name]


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    name: str | None = None,
    task: str = "image-tokenizer",
    pretrained: PretrainedRecord | None = None,
    tags: tuple[str, ...] = (),
):
    """Function decorator registering a preset ``fn(**overrides) -> model`` under ``name``."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model preset {key!r} registered twice")
        _MODELS[key] = ModelEntry(key, f, task, pretrained, tuple(tags))
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*", task: str | None = None, pretrained: bool = False) -> list[str]:
    """Sorted preset names matching a glob ``pattern``; optionally only one task / with weights."""
    _ensure_loaded()
    out = []
    for key, entry in _MODELS.items():
        if not fnmatch.fnmatch(key, pattern):
            continue
        if task is not None and entry.task != task:
            continue
        if pretrained and (entry.pretrained is None):
            continue
        out.append(key)
    return sorted(out)


def get_model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _MODELS:
        close = [m for m in _MODELS if name.split("_")[0] in m][:8]
        raise ValueError(f"unknown model {name!r}; similar: {close}; see visualtok.list_models()")
    return _MODELS[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name`` with random weights; ``overrides`` replace config fields."""
    model = get_model_entry(name).builder(**overrides)
    if hasattr(model, "model_name"):
        model.model_name = name
    return model
