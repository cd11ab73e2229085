"""Which code path the quantizer core takes for a device: CPU or accelerator.

* **CPU**: reading a value on the host costs nothing extra, so inputs are validated exactly and
  eagerly (a ``ValueError`` naming the problem), and the nearest-code search runs in cache-sized
  tiles.
* **Accelerator** (CUDA): a host read waits for every queued kernel, and a step of a few hundred
  microseconds is bound by kernel launches. The nearest-code search is one matmul + argmax when
  the ``[N, K]`` scores fit the memory budget. The NaN/inf check of the latents never stalls the
  queue:

  - an *inference* call (the module in eval mode: ``encode``, an eval ``forward``) queues one
    reduction and an asynchronous copy of it to pinned host memory, launches the rest of its work,
    and reads the copied value at the end, before it returns: a user's bad input still gets the
    exact ``ValueError``, but the host waits only for the check's own kernel, not for the work
    queued after it (``DeferredCheck``);
  - a *training* step, where the latents come from the model and carry autograd history (grad mode
    on and ``z.requires_grad``), reads nothing back: its check is queued with
    ``torch._assert_async`` (a failure is a device-side assert at the next synchronisation; the
    trainer's non-finite-loss check is the friendly report for a diverging run);
  - any other call (a training-mode call without autograd history, which updates state) checks
    eagerly, so bad latents never reach the codebook statistics.

  ``set_exact_checks(True)`` (or ``VISUALTOK_EXACT_CHECKS=1``) makes every check eager.
  Codes passed to ``decode`` are always checked eagerly: an out-of-range index would be a
  device-side assert inside the lookup.

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
    "check_mode",
    "DeferredCheck",
    "reading_deferred_check",
    "set_exact_checks",
    "accelerator_paths_on_cpu",
]

_ACCELERATOR_ON_CPU = False
_READING_DEFERRED = False
_EXACT_EVERYWHERE = os.environ.get("VISUALTOK_EXACT_CHECKS", "").strip().lower() in (
    "1", "true", "yes", "on",
)


def tiled_search(device: torch.device) -> bool:
    """True: nearest-code search in cache-sized CPU tiles; False: the accelerator search."""
    return device.type == "cpu" and not _ACCELERATOR_ON_CPU


def check_mode(t: torch.Tensor, stateless: bool) -> str:
    """How to check the latents ``t`` of a call: ``"eager"``, ``"async"`` or ``"deferred"``.

    ``stateless``: the call updates no state (an eval-mode forward), so its check may be read at
    the end of the call. See the module docstring.
    """
    if _EXACT_EVERYWHERE or not (_ACCELERATOR_ON_CPU or t.device.type == "cuda"):
        return "eager"
    if torch.is_grad_enabled() and t.requires_grad:
        return "async"
    return "deferred" if stateless else "eager"


class DeferredCheck:
    """One device value copied to the host without waiting; ``read()`` waits for that copy only.

    The copy goes to pinned memory with ``non_blocking=True`` and a CUDA event is recorded behind
    it, so the kernels launched after the check keep the device busy while the host waits.
    """

    def __init__(self, value: torch.Tensor) -> None:
        on_cuda = value.device.type == "cuda"
        self._host = torch.empty((), dtype=value.dtype, pin_memory=on_cuda)
        self._host.copy_(value, non_blocking=True)
        self._event = None
        if on_cuda:
            self._event = torch.cuda.Event()
            self._event.record()

    def read(self) -> float | bool | int:
        """The value, once its copy has landed (a wait on the event, not on the whole queue)."""
        global _READING_DEFERRED
        if self._event is not None:
            self._event.synchronize()
        previous, _READING_DEFERRED = _READING_DEFERRED, True
        try:
            return self._host.item()  # a host tensor: no device sync
        finally:
            _READING_DEFERRED = previous


def reading_deferred_check() -> bool:
    """True while ``DeferredCheck.read`` runs (for the op counter: a read that waits only for the
    check's own kernel, not a pipeline stall)."""
    return _READING_DEFERRED


def set_exact_checks(enabled: bool) -> bool:
    """Eager, host-side input checks on every device and path (``True``), or the per-path checks
    of the module docstring (``False``, the default); returns the previous setting."""
    global _EXACT_EVERYWHERE
    previous, _EXACT_EVERYWHERE = _EXACT_EVERYWHERE, bool(enabled)
    return previous


@contextlib.contextmanager
def accelerator_paths_on_cpu() -> Iterator[None]:
    """Run the accelerator code paths (asynchronous / deferred checks, untiled search) on CPU
    tensors."""
    global _ACCELERATOR_ON_CPU
    previous, _ACCELERATOR_ON_CPU = _ACCELERATOR_ON_CPU, True
    try:
        yield
    finally:
        _ACCELERATOR_ON_CPU = previous
