"""One checkpoint format and offline-first loading.

A visualtok checkpoint is a directory holding

* ``model.safetensors``: the state dict;
* ``config.json``: ``model_class`` (a name from the registry, never an import path),
  ``model_name``, the constructor ``config``, the library version, the ``code_layout`` and the
  sha256 of the weights.

``visualtok.load(name_or_path)`` resolves, in order: a local directory, ``weights/<name>`` (or
``$VISUALTOK_WEIGHTS/<name>``), then a registry record with a hub id, fetched through
``huggingface_hub`` (cache first, network only when not offline). When nothing is found the error
names the file and the directory to put it in.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import config_from_dict, config_to_dict

__all__ = [
    "CheckpointError",
    "PretrainedMixin",
    "describe_state_dict_mismatch",
    "load",
    "load_state_dict_strict",
    "sha256_file",
    "weights_dir",
    "atomic_write",
    "atomic_write_bytes",
    "read_official_state_dict",
    "read_torch_checkpoint",
]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is corrupt, incomplete or belongs to another model."""


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes (``hashlib`` ``algorithm``), read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file: the hash recorded in checkpoints and registry records."""
    return file_digest(path, "sha256", chunk)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """The one atomic writer: yields a temporary path in ``path``'s directory; when the block
    ends without error the file is fsynced and renamed over ``path`` (readers see the old file or
    the complete new one, never a partial one), otherwise it is removed. Temporaries of the same
    file left by a writer that was killed (SIGKILL runs no cleanup) are removed first; one file
    has one writer at a time.

        with atomic_write(out / "model.safetensors") as tmp:
            save_file(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # a killed writer's
        stale.unlink(missing_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_write``)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def read_torch_checkpoint(path: str | Path) -> object:
    """The object of a pickled PyTorch checkpoint, read with ``weights_only=True`` (tensors and
    plain containers only: no code from the file runs); a clear ``ValueError`` otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Weights only load failed" in text:  # a real pickle, but with code objects in it
            why = "it holds objects other than tensors and plain containers, which would run code"
        else:
            why = f"{type(e).__name__}: {(text.splitlines() or [''])[0][:160]}"
        raise ValueError(
            f"{path} is not a PyTorch checkpoint that loads weights-only (expected an official "
            f".pt/.pth/.bin/.ckpt file of tensors and plain containers, or a .safetensors "
            f"file): {why}"
        ) from None


def read_official_state_dict(
    path: str | Path, wrappers: tuple[str, ...] = ("state_dict", "model", "module")
) -> dict:
    """Read an official ``.bin``/``.pt``/``.pth``/``.safetensors`` state dict safely.

    Pickles are read with ``weights_only=True`` only. Wrapper keys (``wrappers``, in order, e.g.
    ``state_dict``, ``model``, ``module``) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    else:
        sd = read_torch_checkpoint(path)
    for key in wrappers:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return sd


def weights_dir() -> Path:
    """Directory of shipped weights: ``$VISUALTOK_WEIGHTS``; else, running from a source checkout,
    the repository's ``weights/``; else the copy a wheel installs inside the package
    (``visualtok/weights/``, written by ``setup.py``)."""
    env = os.environ.get("VISUALTOK_WEIGHTS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "weights").is_dir():
        return checkout / "weights"
    return package / "weights"


def describe_state_dict_mismatch(
    own: dict[str, torch.Tensor],
    state_dict: dict[str, torch.Tensor],
    unexpected: list[str] | None = None,
) -> str:
    """List how ``state_dict`` fails to match ``own`` (a model's state dict); ``""`` if it matches.

    Names every unexpected, missing and mis-shaped key (the first 20 of each, then the count).
    ``unexpected`` replaces the computed unexpected keys, for callers that report them under
    other names (a converter lists the official keys it could not map). Only names and shapes
    are compared, so meta tensors work.
    """
    if unexpected is None:
        unexpected = [k for k in state_dict if k not in own]
    missing = sorted(set(own) - set(state_dict))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )

    def fmt(items: list[str]) -> str:
        return ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")

    parts = []
    if unexpected:
        parts.append(f"unexpected keys: {fmt(sorted(unexpected))}")
    if missing:
        parts.append(f"missing keys: {fmt(missing)}")
    if mismatched:
        parts.append(f"shape mismatches: {fmt(mismatched)}")
    return "; ".join(parts)


def load_state_dict_strict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = ""
) -> None:
    """``load_state_dict`` that lists every missing, unexpected and mis-shaped key in one error."""
    problems = describe_state_dict_mismatch(model.state_dict(), state_dict)
    if problems:
        where = f" ({source})" if source else ""
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__}{where}: {problems}"
        )
    model.load_state_dict(state_dict, strict=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object; got {type(data).__name__}")
    return data


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for models with a dataclass ``config``.

    A subclass sets ``config_class`` and takes ``config`` as its only constructor argument. It may
    expose ``code_layout`` (a ``CodeLayout``) which is recorded for tools that read configs only.
    """

    config_class: type = None  # type: ignore[assignment]
    model_name: str | None = None

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` atomically; returns the directory."""
        from . import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        with atomic_write(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt",
                                                 "model_class": type(self).__name__})
        layout = getattr(self, "code_layout", None)
        meta = {
            "format": "visualtok",
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "model_class": type(self).__name__,
            "model_name": self.model_name,
            "config": config_to_dict(self.config),  # type: ignore[attr-defined]
            "code_layout": layout.to_dict() if layout is not None else None,
            "files": {WEIGHTS_NAME: {"sha256": sha256_file(directory / WEIGHTS_NAME)}},
        }
        atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        return directory

    @classmethod
    def from_config(cls, config: Any) -> nn.Module:
        if isinstance(config, dict):
            config = config_from_dict(cls.config_class, config)
        return cls(config)  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> nn.Module:
        """Load a visualtok checkpoint directory.

        ``cls`` may be a base class of the stored class.
        """
        model = _load_directory(Path(directory), map_location)
        if not isinstance(model, cls):
            raise CheckpointError(
                f"{directory} holds a {type(model).__name__}, not a {cls.__name__}"
            )
        return model


def _load_directory(directory: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    from .registry import get_model_class

    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{directory} is not a visualtok checkpoint: {p.name} is missing "
                f"(expected {CONFIG_NAME} + {WEIGHTS_NAME})"
            )
    meta = _read_json(cfg_path)
    if meta.get("format") != "visualtok" or "model_class" not in meta or "config" not in meta:
        raise CheckpointError(
            f"{cfg_path} is not a visualtok config.json (needs format, model_class, config)"
        )
    expected_sha = meta.get("files", {}).get(WEIGHTS_NAME, {}).get("sha256")
    if expected_sha and sha256_file(w_path) != expected_sha:
        raise CheckpointError(
            f"{w_path} is corrupt: sha256 differs from the one recorded in {CONFIG_NAME}"
        )
    model_cls = get_model_class(meta["model_class"])
    try:
        model = model_cls.from_config(meta["config"])
    except (TypeError, ValueError) as e:  # a config the model refuses: say which file holds it
        raise CheckpointError(f"{cfg_path}: {e}") from None
    try:
        state = load_file(str(w_path), device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{w_path} is not a readable safetensors file: {e}") from None
    load_state_dict_strict(model, state, source=str(w_path))
    model.model_name = meta.get("model_name")
    return model.eval()


def _fetch_from_hub(name: str) -> Path:
    """Resolve a preset's pretrained files through the HF cache, online only when allowed."""
    from .registry import get_model_entry

    entry = get_model_entry(name)
    rec = entry.pretrained
    local_dir = weights_dir() / name
    if rec is None or rec.hub_id is None:
        wanted = f"; put its official {rec.filename} there" if rec is not None else ""
        raise FileNotFoundError(
            f"no weights for {name!r}: no local checkpoint at {local_dir} "
            f"and the preset has no hub record{wanted}"
        )
    files = [rec.filename] + ([rec.config_filename] if rec.config_filename else [])
    paths: list[Path] = []
    try:
        from huggingface_hub import hf_hub_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        for fname in files:
            try:
                p = hf_hub_download(rec.hub_id, fname, local_files_only=True)
            except Exception:
                if offline:
                    raise
                p = hf_hub_download(rec.hub_id, fname, etag_timeout=5)
            paths.append(Path(p))
    except Exception as e:
        want = ", ".join(files)
        raise FileNotFoundError(
            f"weights for {name!r} are not available offline. Download {want} from the hub repo "
            f"{rec.hub_id!r} and put them in {local_dir}/ "
            f"(sha256 of {rec.filename}: {rec.sha256 or 'not recorded'}). "
            f"({type(e).__name__}: {e})"
        ) from None
    _check_recorded_digest(name, paths[0], rec.sha256)
    return paths[0].parent


def _check_recorded_digest(name: str, path: Path, sha256: str | None) -> None:
    """``CheckpointError`` unless ``path`` has the registry's sha256; without a recorded digest
    the file is loaded with a warning that it is unverified."""
    if sha256 is None:
        log.warning("no sha256 is recorded for %r: %s is loaded unverified", name, path)
    elif sha256_file(path) != sha256:
        raise CheckpointError(
            f"{path} does not have the sha256 recorded for {name!r} in the registry "
            f"({sha256[:12]}...): re-fetch or retrain it"
        )


def _load_official(name: str, directory: Path) -> nn.Module:
    """An official-format checkpoint (weights + official config) in ``directory``, converted
    on load."""
    from .convert import convert_checkpoint
    from .registry import get_model_entry

    rec = get_model_entry(name).pretrained
    assert rec is not None
    weights = directory / rec.filename
    _check_recorded_digest(name, weights, rec.sha256)
    config = directory / rec.config_filename if rec.config_filename else None
    return convert_checkpoint(rec.format, weights, config=config, preset=name).eval()


def load(name_or_path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model by local directory or preset name, offline first (see module docstring)."""
    path = Path(name_or_path)
    if path.is_dir():
        return _load_directory(path, map_location)
    if path.suffix in (".safetensors", ".json") and path.parent.is_dir() and path.exists():
        return _load_directory(path.parent, map_location)
    name = str(name_or_path)
    local = weights_dir() / name
    from .registry import get_model_entry, list_models

    if (local / CONFIG_NAME).is_file():
        if name in list_models():  # shipped weights: check the sha256 the registry records
            rec = get_model_entry(name).pretrained
            if rec is not None and rec.format == "visualtok":
                _check_recorded_digest(name, local / rec.filename, rec.sha256)
        return _load_directory(local, map_location)

    entry = get_model_entry(name)  # raises for unknown names
    rec = entry.pretrained
    if rec is not None and rec.format != "visualtok" and (local / rec.filename).is_file():
        return _load_official(name, local)
    directory = _fetch_from_hub(name)
    if rec is not None and rec.format != "visualtok":
        return _load_official(name, directory)
    return _load_directory(directory, map_location)
