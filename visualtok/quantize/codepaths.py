"""Which code path the quantizer core takes for a device: CPU or accelerator.

* **CPU**: reading a value on the host costs nothing extra, so inputs are validated exactly and
  eagerly (a ``ValueError`` naming the problem), and the nearest-code search runs in cache-sized
  tiles.
* **Accelerator** (CUDA): a host read waits for every queued kernel, and a step of a few hundred
  microseconds is bound by kernel launches. The nearest-code search is one matmul + argmax when
  the ``[N, K]`` scores fit the memory budget. Inputs of the public API (``encode``, ``decode``,
  ``from_ids``, an inference ``forward``) are still validated exactly, at one host read, because a
  user's bad input must get a ``ValueError``. Only a *training* step, where the latents come from
  the model and carry autograd history (grad mode on and ``z.requires_grad``), reads nothing back:
  its NaN/inf check is queued on the device with ``torch._assert_async`` (a failure is a
  device-side assert at the next synchronisation; the trainer's non-finite-loss check is the
  friendly report for a diverging run). ``set_exact_checks(True)`` (or
  ``VISUALTOK_EXACT_CHECKS=1``) makes training steps exact too.

Other devices (e.g. MPS) take the accelerator search and the exact checks.
``accelerator_paths_on_cpu()`` runs the accelerator paths on CPU tensors: for tests and for
``benchmarks/count_quantizer_ops.py``, which counts the ops a CUDA step launches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = [
    "tiled_search",
    "exact_checks",
    "set_exact_checks",
    "accelerator_paths_on_cpu",
]

_ACCELERATOR_ON_CPU = False
_EXACT_EVERYWHERE = os.environ.get("VISUALTOK_EXACT_CHECKS", "").strip().lower() in (
    "1", "true", "yes", "on",
)


def tiled_search(device: torch.device) -> bool:
    """True: nearest-code search in cache-sized CPU tiles; False: the accelerator search."""
    return device.type == "cpu" and not _ACCELERATOR_ON_CPU


def exact_checks(t: torch.Tensor) -> bool:
    """True: validate ``t`` with host reads (exact ``ValueError``); False: ``torch._assert_async``.

    False only for a CUDA training step (grad mode on, ``t.requires_grad``), see the module doc.
    """
    if _EXACT_EVERYWHERE:
        return True
    training_step = torch.is_grad_enabled() and t.requires_grad
    if _ACCELERATOR_ON_CPU:
        return not training_step
    return t.device.type != "cuda" or not training_step


def set_exact_checks(enabled: bool) -> bool:
    """Exact, host-side input checks in CUDA training steps too (``True``), or only elsewhere
    (``False``, the default); returns the previous setting."""
    global _EXACT_EVERYWHERE
    previous, _EXACT_EVERYWHERE = _EXACT_EVERYWHERE, bool(enabled)
    return previous


@contextlib.contextmanager
def accelerator_paths_on_cpu() -> Iterator[None]:
    """Run the accelerator code paths (asynchronous checks, untiled search) on CPU tensors."""
    global _ACCELERATOR_ON_CPU
    previous, _ACCELERATOR_ON_CPU = _ACCELERATOR_ON_CPU, True
    try:
        yield
    finally:
        _ACCELERATOR_ON_CPU = previous
