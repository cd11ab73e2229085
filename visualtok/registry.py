"""The one registry: model presets, model classes, checkpoint converters, training tasks and
quantizer families, each a name -> object table filled by decorators.

One lazy-import rule for every table: it lists the modules whose import registers its entries,
and the first lookup or listing of that table imports them all. ``import visualtok`` stays cheap,
import cycles are impossible, and nothing is ever imported by a name read from a file: a
checkpoint's ``model_class`` is looked up in ``MODEL_CLASSES``, never imported.

* ``MODELS``: ``@register_model`` functions ``preset(**overrides) -> model`` (``ModelEntry``: task,
  optional ``PretrainedRecord`` saying where official or shipped weights live);
* ``MODEL_CLASSES``: ``@register_model_class``, the classes a ``config.json`` may name;
* ``CONVERTERS``: ``@register_converter(family)``, ``fn(weights, config=None, preset=None)``;
* ``TASKS``: ``@register_task(name)``, the training tasks a config's ``task:`` picks;
* ``QUANTIZERS``: ``@register_quantizer(type)``, the quantizer families ``QuantizerConfig.type``
  names;
* ``TEACHERS``: ``@register_teacher(name)``, frozen feature networks (``factory(device)``) for
  semantic regularisation and feature alignment.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "Registry",
    "PretrainedRecord",
    "ModelEntry",
    "MODELS",
    "MODEL_CLASSES",
    "CONVERTERS",
    "TASKS",
    "QUANTIZERS",
    "TEACHERS",
    "register_model",
    "register_model_class",
    "register_converter",
    "register_task",
    "register_quantizer",
    "register_teacher",
    "get_model_class",
    "list_models",
    "create_model",
    "get_model_entry",
]


class Registry:
    """A name -> object table of one ``kind``, filled by the decorators of ``modules``."""

    def __init__(self, kind: str, modules: tuple[str, ...]) -> None:
        self.kind = kind
        self.modules = modules
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)

    def add(self, name: str, obj: Any) -> Any:
        """Register ``obj`` under ``name``; registering another object under a taken name is an
        error (the same object again is a no-op, e.g. a module re-imported by a test)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string; got {name!r}")
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = obj
        return obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests register temporary entries and take them out again)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


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
    # audio codecs: what the waveform and the codes look like
    sample_rate: int | None = None  # Hz the model takes
    hop_length: int | None = None  # samples per code frame
    num_codebooks: int | None = None  # RVQ levels at the highest bitrate
    channels: int | None = None  # audio channels


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str  # "image-tokenizer", "video-tokenizer", "audio-codec", "generator"
    pretrained: PretrainedRecord | None = None
    tags: tuple[str, ...] = field(default=())


# The modules that fill each table (the one lazy-import rule above).
_MODEL_MODULES = (
    "visualtok.image.titok",
    "visualtok.video.titok3d",
    "visualtok.generate.gpt",
    "visualtok.image.vqgan",
    "visualtok.image.retok",
    "visualtok.image.flextok",
    "visualtok.audio.encodec",
    "visualtok.audio.dac",
    "visualtok.audio.codec",
)
MODELS = Registry("model preset", _MODEL_MODULES)
MODEL_CLASSES = Registry("model class", _MODEL_MODULES)
CONVERTERS = Registry("converter", (
    "visualtok.convert.titok",
    "visualtok.convert.vqgan",
    "visualtok.convert.retok",
    "visualtok.convert.flextok",
    "visualtok.convert.encodec",
    "visualtok.convert.dac",
))
TASKS = Registry("task", (
    "visualtok.train.tokenizer_task",
    "visualtok.train.generator_task",
    "visualtok.train.flextok_task",
    "visualtok.train.codec_task",
    "visualtok.train.video_task",
))
TEACHERS = Registry("teacher", (  # frozen feature networks for semantic/REPA losses
    "visualtok.train.semantic",
))
QUANTIZERS = Registry("quantizer type", (
    "visualtok.quantize.vq",
    "visualtok.quantize.lfq",
    "visualtok.quantize.fsq",
    "visualtok.quantize.rvq",
    "visualtok.quantize.ptq",
))


def register_model_class(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: allow ``cls`` to be named by ``config.json`` ``model_class``."""
    return MODEL_CLASSES.add(cls.__name__, cls)


def get_model_class(name: str) -> type[nn.Module]:
    if name not in MODEL_CLASSES:
        raise ValueError(
            f"unknown model class {name!r} in checkpoint config; known classes: "
            f"{MODEL_CLASSES.names()}"
        )
    return MODEL_CLASSES.get(name)


def register_converter(family: str) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Function decorator: ``fn(weights, config=None, preset=None) -> model`` for ``family``."""
    return lambda fn: CONVERTERS.add(family, fn)


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: make a ``Task`` subclass selectable as ``task: <name>`` in a config (and
    its ``task_name``, for messages)."""

    def add(cls: type) -> type:
        cls.task_name = name
        return TASKS.add(name, cls)

    return add


def register_teacher(name: str) -> Callable[[Callable], Callable]:
    """Function decorator: ``factory(device) -> nn.Module``, a frozen feature network selectable
    by name (e.g. ``loss.semantic_teacher``)."""
    return lambda factory: TEACHERS.add(name, factory)


def register_quantizer(type_name: str) -> Callable[[type], type]:
    """Class decorator: the quantizer family built for ``QuantizerConfig(type=type_name)``."""
    return lambda cls: QUANTIZERS.add(type_name, cls)


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
        MODELS.add(key, ModelEntry(key, f, task, pretrained, tuple(tags)))
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*", task: str | None = None, pretrained: bool = False) -> list[str]:
    """Sorted preset names matching a glob ``pattern``; optionally only one task / with weights."""
    out = []
    for key in MODELS.names():
        entry = MODELS.get(key)
        if not fnmatch.fnmatch(key, pattern):
            continue
        if task is not None and entry.task != task:
            continue
        if pretrained and entry.pretrained is None:
            continue
        out.append(key)
    return out


def get_model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        close = [m for m in MODELS.names() if name.split("_")[0] in m][:8]
        raise ValueError(f"unknown model {name!r}; similar: {close}; see visualtok.list_models()")
    return MODELS.get(name)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name`` with random weights; ``overrides`` replace config fields."""
    model = get_model_entry(name).builder(**overrides)
    if hasattr(model, "model_name"):
        model.model_name = name
    return model
