"""Host time per quantizer call, visualtok vs the reference, with the device work made negligible.

A second proxy (beside ``count_quantizer_ops.py``) for the launch-bound GPU rows of issue #2. When a
step is a few hundred microseconds on a GPU, its throughput is set by what the host does per call:
Python, dispatch and kernel launches (plus any host sync, which stops the host from running ahead
of the device). This script times that host cost on CPU: every setting of ``bench_quantizers.py``
with its codebook shrunk to at most 64 codes and LFQ to 8 bits, on 8 tokens and 1 thread, so each
op's arithmetic is a few hundred flops and the time is the per-call overhead. Same options as the
bench, and the same train step (forward + backward) and inference call, imported from it.
visualtok runs its accelerator code path (``codepaths.accelerator_paths_on_cpu``, with the stock
``F.linear`` that CUDA runs instead of the CPU's oneDNN linear) unless ``--path cpu``.

    python benchmarks/quantizer_host_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, write_json  # noqa: E402
from benchmarks.bench_quantizers import (  # noqa: E402
    SETTINGS,
    infer,
    ours_step,
    ref_lfq,
    ref_rvq,
    ref_step,
    ref_vq,
)
from visualtok.nn.linear import cpu_linear_backend_as  # noqa: E402
from visualtok.quantize import QuantizerConfig, build_quantizer  # noqa: E402
from visualtok.quantize.codepaths import accelerator_paths_on_cpu  # noqa: E402

MAX_CODES = 64
LFQ_BITS, LFQ_GROUP = 8, 4


def shrunk(name: str) -> tuple[dict, Callable[[], torch.nn.Module]]:
    """The bench setting ``name`` with at most ``MAX_CODES`` codes (LFQ: ``LFQ_BITS`` bits)."""
    cfg, make_ref, _, _ = SETTINGS[name]
    cfg = dict(cfg)
    if cfg["type"] in ("vq", "rvq"):
        cfg["codebook_size"] = k = min(cfg["codebook_size"], MAX_CODES)
        if cfg["type"] == "vq":
            return cfg, lambda: ref_vq(cfg["dim"], k, cfg.get("l2_normalize", False))
        return cfg, lambda: ref_rvq(cfg["dim"], k, cfg["num_quantizers"])
    if cfg["type"] == "lfq":
        cfg.update(dim=LFQ_BITS, group_size=LFQ_GROUP)
        return cfg, lambda: ref_lfq(LFQ_BITS)
    return cfg, make_ref  # FSQ: nothing to shrink


def per_call_us(fn: Callable[[], Any], calls: int, rounds: int = 7) -> float:
    """Best over ``rounds`` of the mean microseconds per call over ``calls`` calls.

    Batched rather than ``_common.time_call`` (a median of individually timed calls, at most 50):
    calls of tens of microseconds need many per reading.
    """
    for _ in range(max(calls // 10, 5)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def measure(model: torch.nn.Module, step_fn, z: torch.Tensor, calls: int) -> tuple[float, float]:
    model.train()
    train = per_call_us(step_fn(model, z), calls)
    model.eval()
    return train, per_call_us(infer(model, z.detach()), calls)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--calls", type=int, default=200, help="calls per timing round")
    ap.add_argument("--path", choices=("accelerator", "cpu"), default="accelerator",
                    help="visualtok code path (the reference has one)")
    ap.add_argument("--only", default=None, help="substring: run only matching settings")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info("cpu")
    print(f"machine: {info}\n{args.tokens} tokens, 1 thread, visualtok path: {args.path}")
    rows = []
    for name in SETTINGS:
        if args.only and args.only.lower() not in name.lower():
            continue
        cfg, make_ref = shrunk(name)
        torch.manual_seed(0)
        z = torch.randn(2, max(args.tokens // 2, 1), cfg["dim"], requires_grad=True)
        with contextlib.ExitStack() as paths:
            if args.path == "accelerator":  # CUDA's code path, and its linear (F.linear)
                paths.enter_context(accelerator_paths_on_cpu())
                paths.enter_context(cpu_linear_backend_as("aten"))
            ours = measure(build_quantizer(QuantizerConfig(**cfg)), ours_step, z, args.calls)
        ref = measure(make_ref(), ref_step, z, args.calls)
        as_run = (f"2^{cfg['dim']} codes" if cfg["type"] == "lfq" else
                  f"{cfg['codebook_size']} codes" if "codebook_size" in cfg else "as bench")
        rows.append({
            "setting": name, "as run": as_run,
            "ours train us": ours[0], "ref train us": ref[0], "train x": ref[0] / ours[0],
            "ours infer us": ours[1], "ref infer us": ref[1], "infer x": ref[1] / ours[1],
        })
    print_table(rows, title=f"Quantizer host time per call ({args.path} path; x = ref / ours)")
    write_json(args.json, {"machine": info, "tokens": args.tokens, "path": args.path,
                           "rows": rows})
    return rows


if __name__ == "__main__":
    main()
