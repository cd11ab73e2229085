"""Atomic, resumable training checkpoints.

Layout of ``<output_dir>/checkpoints/``::

    step_00000200/          one complete checkpoint
        state.pt            modules, optimizers, schedulers, EMA, sampler, task state, step, meta
        rng_rank0.pt        python / numpy / torch (+cuda) RNG state of each process
        rng_rank1.pt
    latest                  text file naming the newest complete checkpoint directory

A checkpoint is written into a hidden temporary directory and renamed into place with
``os.replace`` only once every file is complete; ``latest`` is then rewritten atomically. A crash
at any point leaves the previous ``latest`` pointing at a complete checkpoint. Everything is loaded
with ``torch.load(weights_only=True)``: only tensors and plain containers are stored.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..hub import CheckpointError, atomic_write, atomic_write_bytes

__all__ = [
    "save_state_file",
    "load_state_file",
    "rng_state",
    "set_rng_state",
    "checkpoint_dir_for",
    "finalize_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
]

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"
LATEST_NAME = "latest"


def save_state_file(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through ``hub.atomic_write`` (never a half-written ``path``)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_state_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"incomplete checkpoint: {path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / not a torch file
        raise CheckpointError(f"{path} is not a readable checkpoint file: {e}") from None


def rng_state() -> dict[str, Any]:
    """RNG state of this process as weights_only-loadable tensors and plain types."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(float, np_state[2:]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[-2], tuple(int(v) for v in py[:-2]), py[-1]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir_for(root: Path, step: int) -> tuple[Path, Path]:
    """(temporary dir to write into, final dir) for the checkpoint of ``step``."""
    final = root / f"step_{step:08d}"
    return root / f".tmp_step_{step:08d}", final


def finalize_checkpoint(tmp: Path, final: Path, keep_last: int) -> Path:
    """Rename a fully written ``tmp`` into ``final``, point ``latest`` at it, prune old ones."""
    if not (tmp / STATE_NAME).is_file():
        raise CheckpointError(f"refusing to finalize {tmp}: {STATE_NAME} was not written")
    if final.exists():  # re-saving the same step (e.g. final step == a ckpt step after resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(final.parent / LATEST_NAME, (final.name + "\n").encode())
    prune_checkpoints(final.parent, keep_last)
    return final


def _complete(d: Path) -> bool:
    return d.is_dir() and (d / STATE_NAME).is_file() and not d.name.startswith(".")


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``latest`` pointer first, then a scan)."""
    if not root.is_dir():
        return None
    pointer = root / LATEST_NAME
    if pointer.is_file():
        d = root / pointer.read_text().strip()
        if _complete(d):
            return d
        log.warning("%s points at %s, which is incomplete; scanning for another", pointer, d)
    done = sorted(d for d in root.glob("step_*") if _complete(d))
    return done[-1] if done else None


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and stale temporary dirs."""
    done = sorted(d for d in root.glob("step_*") if _complete(d))
    for d in done[: max(len(done) - keep_last, 0)]:
        shutil.rmtree(d, ignore_errors=True)
    for d in root.glob(".tmp_step_*"):
        shutil.rmtree(d, ignore_errors=True)
