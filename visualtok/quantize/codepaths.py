"""Which code path the quantizer core takes for a device: CPU or accelerator.

* **CPU**: reading a value on the host costs nothing extra, so inputs are validated exactly and
  eagerly (a ``ValueError`` naming the problem), and the nearest-code search runs in cache-sized
  tiles.
* **Accelerator** (CUDA): a host read waits for every queued kernel, and a step of a few hundred
  microseconds is bound by kernel launches, so a steady-state train or inference step reads
  nothing back: checks are queued on the device with ``torch._assert_async`` (a failed check is a
  device-side assert, reported at the next synchronisation, after which the CUDA context is
  unusable, as with any device assert) and the search is one matmul + argmax when the ``[N, K]``
  scores fit the memory budget. ``set_exact_checks(True)`` (or ``VISUALTOK_EXACT_CHECKS=1``) gives
  the CPU's exact, recoverable ``ValueError`` on every device, at one host sync per check.

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


def exact_checks(device: torch.device) -> bool:
    """True: validate with host reads (exact ``ValueError``); False: ``torch._assert_async``."""
    if _EXACT_EVERYWHERE:
        return True
    if _ACCELERATOR_ON_CPU:
        return False
    return device.type != "cuda"


def set_exact_checks(enabled: bool) -> bool:
    """Exact, host-side input checks on every device (``True``) or only off CUDA (``False``, the
    default); returns the previous setting."""
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
