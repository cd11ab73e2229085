"""CPU fp32 inference GEMM per shape: oneDNN (``torch.ops.mkldnn._linear_pointwise``) on the plain
weight and on a pre-packed one (``_reorder_linear_weight``) against the stock ``F.linear``,
interleaved (A, B, C, A, B, C) in one process, and ``visualtok.nn.linear.Linear`` itself (the
route it picks, its time). The shapes table reuses one weight, which at 1 row stays in cache; the
``--gpt-step`` table is the one where 1-row weights stream from memory as in generation.

The shapes are the model linears that matter: GPT-B (width 768: qkv 2304, proj 768, SwiGLU 2048 and
head 16384) at M = batch rows 1..16 for a cached step and M = 256..4096 for a prefill, TiTok-S
(width 512) encode/decode rows, and the VQ search (4096 x 12 codebook).

    python benchmarks/bench_linear.py --json runs/bench_linear.json
    python benchmarks/bench_linear.py --threads 1 --gpt-step 1 2 8 16   # + whole GPT-B steps
    python benchmarks/bench_linear.py --threads 1 --skip-shapes --gemv-cold   # GEMV GB/s, cold

``--gpt-step`` also times one whole GPT-B cached step (random init) per route: the library's rule,
plain oneDNN at every row count, and stock ``F.linear``, in process CPU time, with the rate at which
the step streams its weights against one plain read of the same bytes (``Tensor.sum`` on huge
pages, as the GEMV weight copies): at 1-2 rows the step is bound by the weight stream, not by
FLOPs. ``rule on PyTorch's BLAS`` is the rule with its 1-row GEMVs on PyTorch's BLAS (MKL) instead
of numpy's OpenBLAS.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, write_json  # noqa: E402
from visualtok.nn import linear as vt_linear  # noqa: E402

# (label, M, K, N)
SHAPES = [
    *[(f"GPT-B cached step b={m} qkv", m, 768, 2304) for m in (1, 2, 4, 8, 16)],
    *[(f"GPT-B cached step b={m} mlp", m, 768, 2048) for m in (1, 2, 4, 8, 16)],
    *[(f"GPT-B cached step b={m} w2", m, 2048, 768) for m in (1, 8, 16)],
    *[(f"GPT-B cached step b={m} head", m, 768, 16384) for m in (1, 2, 4, 8, 16)],
    *[(f"GPT-B step b={m} qkv", m, 768, 2304) for m in (32, 64, 128)],
    ("GPT-B step b=128 head", 128, 768, 16384),
    ("GPT-B prefill 256 qkv", 256, 768, 2304),
    ("GPT-B prefill 2048 mlp", 2048, 768, 2048),
    ("TiTok-S encode rows (8 img) qkv", 8 * 257, 512, 1536),
    ("TiTok-S encode rows (8 img) mlp", 8 * 257, 512, 2048),
    ("TiTok-S decode rows (8 img) proj", 8 * 257, 512, 512),
    ("VQ search 16384 x 4096 x 12", 16384, 12, 4096),
]


def onednn(x, w, b):
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def interleaved(fns, rounds: int, min_time: float) -> list[float]:
    """Median seconds per call of each fn, timed in alternation."""
    times = [[] for _ in fns]
    start = time.perf_counter()
    r = 0
    while r < rounds or time.perf_counter() - start < min_time:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
        r += 1
        if r >= 400:
            break
    return [sorted(t)[len(t) // 2] for t in times]


@contextlib.contextmanager
def _route(name: str):
    """Force every Linear of a model onto one route: ``rule`` (the library's), ``torch_blas``
    (the rule with its 1-row GEMVs on PyTorch's BLAS instead of numpy's OpenBLAS), ``onednn``
    (plain weight at every row count), ``aten`` (stock ``F.linear``)."""
    vt_linear.openblas_gemv_works()  # probe first, so that the saved state is the verdict
    saved = vt_linear._backend, vt_linear._packed_ok, vt_linear.STOCK_ROWS, vt_linear._openblas
    try:
        if name == "aten":
            vt_linear._backend = "aten"
        elif name == "onednn":
            vt_linear._packed_ok, vt_linear.STOCK_ROWS = False, frozenset()
        elif name == "torch_blas":
            vt_linear._openblas = False
        yield
    finally:
        (vt_linear._backend, vt_linear._packed_ok, vt_linear.STOCK_ROWS,
         vt_linear._openblas) = saved


@torch.no_grad()
def gpt_step_rows(batches: list[int], rounds: int) -> list[dict]:
    """One GPT-B cached step (12 layers + the 16384-wide head, position 128) per route, CPU time,
    interleaved: the weights stream from memory once per step, as in generation."""
    from visualtok import create_model

    torch.manual_seed(0)
    model = create_model("gpt_b").eval()
    # bytes a step reads: every Linear weight once (embeddings are gathered, not read whole)
    weight_bytes = sum(m.weight.numel() * 4 for m in model.modules()
                       if isinstance(m, torch.nn.Linear))
    # the same bytes as one plain read (the memory roof), in the huge pages the GEMV copies use
    stream = vt_linear.hugepage_copy(torch.ones(weight_bytes // 4))
    rows = []
    for b in batches:
        model.setup_cache(b)
        x, pos = torch.randn(b, 1, 768), torch.full((1,), 128, dtype=torch.long)

        def step(x=x, pos=pos):
            return model.head.logits(model.step(x, pos)[:, -1])

        def routed(name):
            def call():
                with _route(name):
                    return step()
            return call

        fns = {name: routed(name) for name in ("rule", "torch_blas", "onednn", "aten")}
        fns["read"] = stream.sum
        for fn in fns.values():
            fn(), fn()
        times = {name: [] for name in fns}
        names = list(fns)
        for r in range(rounds):  # rotate the order: no route always runs right after the read
            for name in names[r % len(names):] + names[:r % len(names)]:
                c0 = time.process_time()
                fns[name]()
                times[name].append(time.process_time() - c0)
        ms = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}
        rows.append({"GPT-B cached step": f"batch rows {b}", "Linear rule ms": ms["rule"],
                     "rule on PyTorch's BLAS ms": ms["torch_blas"],
                     "oneDNN plain ms": ms["onednn"], "F.linear ms": ms["aten"],
                     "F.linear / rule": ms["aten"] / ms["rule"],
                     "oneDNN plain / rule": ms["onednn"] / ms["rule"],
                     "weights GB/s (rule)": weight_bytes / ms["rule"] / 1e6,
                     "plain read GB/s": weight_bytes / ms["read"] / 1e6})
    return rows


GEMV_SHAPES = [("qkv", 768, 2304), ("proj", 768, 768), ("w1/w3", 768, 2048), ("w2", 2048, 768),
               ("head", 768, 16384)]


@torch.no_grad()
def cold_gemv_rows(rounds: int, cycle_bytes: float = 3e8) -> list[dict]:
    """GB/s of weight read by a 1-row product at GPT-B's shapes with the weights cold (a cycle of
    ``cycle_bytes`` of copies, 10x the L3), CPU time, interleaved: ``F.linear`` on ordinary
    memory, the ``[in, out]`` huge-page copy through PyTorch's BLAS and through numpy's OpenBLAS,
    the ``Linear`` module's own route, and a plain read of the same huge-page bytes."""
    rows = []
    for name, k, n in GEMV_SHAPES:
        count = max(4, int(cycle_bytes // (4 * k * n)))
        plain = [torch.randn(n, k) for _ in range(count)]
        mods = []
        for w in plain:
            lin = vt_linear.Linear(k, n, bias=False).eval()
            lin.weight.copy_(w)
            mods.append(lin)
        x = torch.randn(1, k)
        wt = [vt_linear.hugepage_copy(w.t()) for w in plain]
        routes = {"F.linear, 4 KiB pages": (functools.partial(F.linear, x), plain),
                  "[in, out] THP, PyTorch BLAS": (functools.partial(torch.mm, x), wt)}
        if vt_linear.openblas_gemv_works():  # the product the library's route runs, bare
            routes["[in, out] THP, numpy OpenBLAS"] = (
                functools.partial(vt_linear._openblas_gemv, x, bias=None),
                [w.numpy() for w in wt])
        routes["Linear module"] = (lambda m, x=x: m(x), mods)
        routes["read (Tensor.sum), THP"] = (torch.Tensor.sum, wt)
        for fn, items in routes.values():
            fn(items[0])  # warm-up: copies made, pages touched
        rates = {r: [] for r in routes}
        for _ in range(rounds):
            for r, (fn, items) in routes.items():
                c0 = time.process_time()
                for item in items:
                    fn(item)
                rates[r].append(4 * k * n * len(items) / (time.process_time() - c0) / 1e9)
        row = {"shape (K x N)": f"{name} {k} x {n}"}
        row.update({f"{r} GB/s": sorted(v)[len(v) // 2] for r, v in rates.items()})
        row["Linear route"] = vt_linear._gemv_route(x, mods[0].weight, None)
        rows.append(row)
        del plain, mods, wt, routes
    return rows


@torch.no_grad()
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per shape at least")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--gpt-step", type=int, nargs="*", default=[], metavar="BATCH",
                    help="also time a whole GPT-B cached step per route at these batch rows")
    ap.add_argument("--step-rounds", type=int, default=11)
    ap.add_argument("--skip-shapes", action="store_true", help="only the --gpt-step table")
    ap.add_argument("--gemv-cold", action="store_true",
                    help="also the 1-row GEMV table with cold weights (GB/s per route)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not vt_linear.onednn_linear_works():
        raise SystemExit("the oneDNN linear op is unavailable in this build: nothing to compare")
    torch.manual_seed(0)
    rows = []
    for label, m, k, n in ([] if args.skip_shapes else SHAPES):
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        lin = vt_linear.Linear(k, n)
        lin.weight.data, lin.bias.data = w, b
        packed = torch.ops.mkldnn._reorder_linear_weight(w, vt_linear.PACK_ROWS_HINT)
        for fn in (onednn, F.linear, vt_linear.linear):
            fn(x, w, b)  # warm-up (oneDNN primitive cache, page faults)
        onednn(x, packed, b), lin(x)
        calls = [functools.partial(onednn, x, w, b), functools.partial(onednn, x, packed, b),
                 functools.partial(F.linear, x, w, b), functools.partial(lin, x)]
        t_dnn, t_pk, t_aten, t_mod = interleaved(calls, args.rounds, args.min_time)
        if vt_linear._call_kind(x) == "gemv" and vt_linear._gemv_route(x, w, b):
            picked = f"{vt_linear._gemv_route(x, w, b)} copy"  # 1 row: a weight copy's route
        elif vt_linear._use_packed(x, w, b):
            picked = "onednn packed"
        elif vt_linear._use_onednn(x, w, b):
            picked = "onednn"
        else:
            picked = "aten"
        rows.append({
            "shape": label, "M": m, "K": k, "N": n,
            "onednn us": 1e6 * t_dnn, "onednn packed us": 1e6 * t_pk, "F.linear us": 1e6 * t_aten,
            "Linear us": 1e6 * t_mod, "F.linear / Linear": t_aten / t_mod,
            "Linear picks": picked,
            "Linear / best": t_mod / min(t_dnn, t_pk, t_aten),
            "GFLOP/s Linear": 2 * m * k * n / t_mod / 1e9,
        })
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if rows:
        print_table(rows, title=f"CPU fp32 linear: oneDNN (plain, packed) vs F.linear, "
                    f"{torch.get_num_threads()} threads (load average {load:.2f})")
    gemv_rows = cold_gemv_rows(args.step_rounds) if args.gemv_cold else []
    if gemv_rows:
        print_table(gemv_rows, title=f"1-row GEMV at GPT-B shapes, weights cold, GB/s of weight "
                    f"read, CPU time, {torch.get_num_threads()} threads, median of "
                    f"{args.step_rounds} interleaved rounds "
                    f"(load average {os.getloadavg()[0]:.2f})")
    step_rows = gpt_step_rows(args.gpt_step, args.step_rounds) if args.gpt_step else []
    if step_rows:
        load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print_table(step_rows, title=f"GPT-B cached step per linear route, CPU time, median of "
                    f"{args.step_rounds} interleaved rounds (load average {load_end:.2f})")
    write_json(args.json, {"machine": machine_info("cpu"), "load_average_1min": load,
                           "rows": rows, "gemv_rows": gemv_rows, "gpt_step_rows": step_rows})
    return rows


if __name__ == "__main__":
    main()
