"""Shared benchmark helpers: machine description, matmul peak, timing, peak memory, tables, JSON.

Every benchmark script imports these so that all figures in ``RESULTS.md`` are measured the same
way: median wall time over repeats after warm-up, CUDA synchronised, peak memory from the CUDA
allocator or (on CPU) from the profiler's allocation records, relative to the pre-call level.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "machine_info",
    "matmul_peak_gflops",
    "matmul_peaks",
    "time_call",
    "time_interleaved",
    "peak_memory_bytes",
    "print_table",
    "write_json",
    "sync",
]


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:
        try:
            with open("/proc/cpuinfo") as f:
                names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
            if names:
                info["cpu_model"] = names[0]
        except OSError:
            pass
    return info


def time_call(
    fn: Callable[[], Any],
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    min_time: float = 0.0,
) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return statistics.median(times)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    cpu: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, timed in rounds A, B, A, B, ... in one process.

    Same-run comparisons on a shared machine: load that comes and goes hits every contender in
    the same round instead of one of them, so the ratios hold even when the absolute times move.
    ``cpu``, if given, is filled with the median process CPU seconds per call
    (``time.process_time``): with one torch thread, the work each contender did, whatever share of
    a core the scheduler gave it (with more threads it also counts OpenMP spin-waiting).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({name: statistics.median(cs) for name, cs in cpus.items()})
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_peaks(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None
) -> dict[str, float]:
    """Achieved GFLOP/s of a large square matmul, per GEMM backend the library can use.

    ``torch.mm`` is PyTorch's stock path (MKL sgemm for CPU fp32, which runs its AVX2 kernels on
    AMD processors); ``visualtok linear`` is ``visualtok.nn.linear.linear`` (oneDNN for CPU fp32
    inference, the stock path elsewhere). Both are measured so every table can be read against
    the best GEMM this machine offers, not only the stock one.
    """
    from visualtok.nn.linear import linear

    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    peaks = {}
    with torch.no_grad():
        for name, fn in (("torch.mm", lambda: a @ b), ("visualtok linear", lambda: linear(a, b))):
            sec = time_call(fn, device, warmup=2, repeats=5)
            peaks[name] = 2 * n**3 / sec / 1e9
    return peaks


def matmul_peak_gflops(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None
) -> float:
    """The machine's practical compute limit: the best of :func:`matmul_peaks`."""
    return max(matmul_peaks(device, dtype, n).values())


def _cpu_peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the bytes that tensors allocate on CPU while ``fn`` runs, above the level before it.

    Replays the allocation and free records of the PyTorch profiler (``profile_memory=True``) in
    time order: every tensor allocation through the CPU allocator, including the temporaries
    inside aten ops, exactly, however briefly they live. Buffers that a library allocates on its
    own (BLAS / oneDNN scratch) are not seen.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no "gpuGetDeviceCount failed" on CPU hosts
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            records.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    level = peak = 0
    for _, delta in sorted(records):
        level += delta
        peak = max(peak, level)
    return peak


def peak_memory_bytes(fn: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """Extra memory at peak while running ``fn`` once: the CUDA allocator's peak, or on CPU the
    peak of tensor allocations replayed from the profiler (``_cpu_peak_allocated_bytes``)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _cpu_peak_allocated_bytes(fn)


def print_table(
    rows: list[dict[str, Any]], columns: list[str] | None = None, title: str = ""
) -> None:
    """Print ``rows`` as a Markdown table (floats to 3 significant digits)."""
    if not rows:
        return
    columns = columns or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    if title:
        print(f"\n### {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
