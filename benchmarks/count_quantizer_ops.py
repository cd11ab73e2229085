"""Quantizer steps as a count of dispatched aten ops and host syncs: visualtok vs the reference.

A device-independent proxy for launch-bound GPU steps. At 16k tokens a VQ 4096x12 or FSQ step on
an H100 takes a few hundred microseconds, so its time is set by how many kernels it launches and
how often the host waits for the device, not by FLOPs. This script runs, for every setting of
``bench_quantizers.py`` (same configs and reference constructors, imported from there), one train
step (forward + backward, as that benchmark does) and one inference call, each after one warm-up
call, under a ``TorchDispatchMode`` and counts:

* **ops**: aten ops that do work (a proxy for CUDA kernel launches): every dispatched op except
  views and metadata-only ops (``view``, ``expand``, ``detach``, ``empty``, ...). Backward ops run
  by autograd are included. One aten op can be several kernels on CUDA (and the reverse under
  ``torch.compile``), so compare counts, not times;
* **syncs**: ops that make the host wait for a CUDA device: reading a value to the host
  (``_local_scalar_dense``, i.e. ``.item()``, ``bool(t)``, ``int(t)``), outputs whose shape depends
  on the data (``nonzero``, ``unique``, ``masked_select``, boolean-mask indexing), ops whose CUDA
  kernel reads its input's range on the host (``bincount``, ``histc``, ``repeat_interleave``
  without ``output_size``), ``equal``, and ``Tensor.tolist``/``numpy``/``cpu``;
* **MiB moved**: the bytes of every counted op's tensor inputs and outputs, summed: a proxy for
  the device-memory traffic that bounds a step once its tensors are large (an ``[N, K]`` score or
  one-hot matrix dominates it); fused or cached reads are not modelled;
* **deferred reads**: visualtok's end-of-call read of its queued input check
  (``codepaths.DeferredCheck``: an asynchronous copy to pinned memory behind an event). The host
  waits for that one early kernel, not for the work queued after it, so the queue never drains;
  counted apart from the syncs.

The work runs on CPU tensors. visualtok picks a code path per device (exact eager validation and
cache-sized search tiles on CPU; asynchronous checks and one large matmul elsewhere):
``--path accelerator`` (the default) counts the path a CUDA device runs, through
``visualtok.quantize.codepaths.accelerator_paths_on_cpu``; ``--path cpu`` counts the CPU path. The
reference has one path, but ``F.one_hot`` checks its input range with host reads on CPU only;
those are left out of the accelerator counts (``OpCounter(as_cuda=True)``).

Settings whose reference builds dense ``[N, K]`` matrices are counted on fewer tokens (at most
``DENSE_ELEMENTS`` per matrix, and bench_quantizers' own cap), so a full run takes about a minute
and 2.5 GiB on CPU.

    python benchmarks/count_quantizer_ops.py --tokens 16384 --json out.json
    python benchmarks/count_quantizer_ops.py --tokens 256 --only FSQ --details
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, write_json  # noqa: E402
from benchmarks.bench_quantizers import SETTINGS, ours_step, ref_step  # noqa: E402
from visualtok.quantize import QuantizerConfig, build_quantizer  # noqa: E402
from visualtok.quantize.codepaths import reading_deferred_check  # noqa: E402

aten = torch.ops.aten

# Dispatched but launch no kernel: allocation and metadata only.
_FREE = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten.new_empty.default, aten.new_empty_strided.default, aten._unsafe_view.default,
    aten.set_.source_Storage_storage_offset, aten.resize_.default,
}
# Always a host sync on CUDA.
_SYNC = {
    "_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "unique",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "bincount", "histc", "equal", "allclose",
}
# Boolean (or uint8) index tensors make these call nonzero internally.
_MASK_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl"}
DENSE_ELEMENTS = 2**26  # 256 MiB of fp32 per dense reference matrix: keeps a run in a few GiB
# Composite ops whose CPU decomposition runs ops the CUDA one does not (see OpCounter).
_CPU_ONLY = {"one_hot": {"min", "max", "_local_scalar_dense"}}
_HOST_READS = {"tolist", "numpy", "cpu", "__array__"}


def _is_sync(func, args: tuple, kwargs: dict) -> bool:
    name = func.overloadpacket.__name__
    if name in _SYNC:
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor) and (
            len(args) < 2 or isinstance(args[1], torch.Tensor))
    if name in _MASK_INDEXED and len(args) > 1 and isinstance(args[1], (list, tuple)):
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                   for i in args[1])
    return False


class OpCounter(TorchDispatchMode):
    """Count dispatched aten ops (minus views / metadata) and host-syncing ops by name.

    ``as_cuda``: leave out what a composite op runs on CPU only (``one_hot``'s host-side range
    check: ``min``/``max`` + two host reads; on CUDA it relies on ``scatter``'s device assert).
    """

    def __init__(self, as_cuda: bool = False) -> None:
        super().__init__()
        self.as_cuda = as_cuda
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.cpu_only: Counter[str] = Counter()  # left out with as_cuda
        self.deferred: Counter[str] = Counter()  # reads of a DeferredCheck: no pipeline stall
        self.bytes_moved = 0  # sum over counted ops of their tensor inputs' and outputs' bytes
        self.inside: list[str] = []  # composite ops being run (set by HostReads)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if self.as_cuda and self.inside and func.overloadpacket.__name__ in _CPU_ONLY.get(
                self.inside[-1], ()):
            self.cpu_only[name] += 1
            return func(*args, **kwargs)
        deferred = reading_deferred_check()  # a host tensor's value: no kernel, no stall
        out = func(*args, **kwargs)
        if not (func.is_view or func in _FREE or deferred):
            self.ops[name] += 1
            self.bytes_moved += sum(t.numel() * t.element_size()
                                    for t in tree_leaves((args, kwargs, out))
                                    if isinstance(t, torch.Tensor))
        if _is_sync(func, args, kwargs):
            (self.deferred if deferred else self.syncs)[name] += 1
        return out


class HostReads(TorchFunctionMode):
    """``Tensor.tolist`` / ``numpy`` / ``cpu``: host reads that dispatch nothing on CPU tensors."""

    def __init__(self, counter: OpCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _HOST_READS:
            self.counter.syncs[f"Tensor.{name}"] += 1
        if name not in _CPU_ONLY:
            return func(*args, **(kwargs or {}))
        self.counter.inside.append(name)
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.counter.inside.pop()


def count(fn, as_cuda: bool = False) -> OpCounter:
    """Ops and syncs of one call of ``fn`` (after one uncounted warm-up call)."""
    fn()
    counter = OpCounter(as_cuda)
    with HostReads(counter), counter:
        fn()
    return counter


def _ours_paths(path: str):
    if path == "cpu":
        return contextlib.nullcontext()
    from visualtok.quantize.codepaths import accelerator_paths_on_cpu

    return accelerator_paths_on_cpu()


def count_setting(cfg: dict, make_ref, tokens: int, path: str) -> dict[str, dict[str, OpCounter]]:
    """``{"ours"|"ref": {"train"|"infer": OpCounter}}`` for one setting on CPU tensors."""
    torch.manual_seed(0)
    d = cfg["dim"]
    z = torch.randn(4, max(tokens // 4, 1), d, requires_grad=True)
    out: dict[str, dict[str, OpCounter]] = {}
    for who, model, step_fn in (("ours", build_quantizer(QuantizerConfig(**cfg)), ours_step),
                                ("ref", make_ref(), ref_step)):
        ctx = _ours_paths(path) if who == "ours" else contextlib.nullcontext()
        as_cuda = path == "accelerator"
        with ctx:
            model.train()
            train = count(step_fn(model, z), as_cuda)
            model.eval()
            zi = z.detach()

            def infer(model=model, zi=zi) -> None:
                with torch.no_grad():
                    model(zi)

            out[who] = {"train": train, "infer": count(infer, as_cuda)}
    return out


def setting_tokens(cfg: dict, tokens: int, ref_cap: int | None) -> int:
    """Tokens to count a setting on: ``tokens``, capped so that the reference's dense ``[N, K]``
    distance / softmax matrices stay within ``DENSE_ELEMENTS`` (it keeps several in train), and at
    bench_quantizers' own reference cap."""
    codes = cfg.get("codebook_size") or (2 ** cfg["dim"] if cfg["type"] == "lfq" else 1)
    tokens = min(tokens, max(DENSE_ELEMENTS // codes, 256))
    return min(tokens, ref_cap) if ref_cap else tokens


def _top(c: Counter[str], n: int = 6) -> str:
    return ", ".join(f"{k.removeprefix('aten.')} x{v}" for k, v in c.most_common(n))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per batch (as the GPU run)")
    ap.add_argument("--path", choices=("accelerator", "cpu"), default="accelerator",
                    help="visualtok code path to count (the reference has one path)")
    ap.add_argument("--only", default=None, help="substring: run only matching settings")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--details", action="store_true", help="print the most frequent ops")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info("cpu")
    print(f"machine: {info}\ntokens per batch: {args.tokens}; visualtok path: {args.path}")
    rows, details = [], {}
    for name, (cfg, make_ref, _flops, ref_cap) in SETTINGS.items():
        if args.only and args.only.lower() not in name.lower():
            continue
        tokens = setting_tokens(cfg, args.tokens, ref_cap)
        res = count_setting(cfg, make_ref, tokens, args.path)
        for phase in ("train", "infer"):
            o, r = res["ours"][phase], res["ref"][phase]
            rows.append({
                "setting": name, "step": phase,
                "ours ops": sum(o.ops.values()), "ref ops": sum(r.ops.values()),
                "ours syncs": sum(o.syncs.values()), "ref syncs": sum(r.syncs.values()),
                "ours deferred reads": sum(o.deferred.values()),
                "ours MiB moved": o.bytes_moved / 2**20, "ref MiB moved": r.bytes_moved / 2**20,
                "note": f"{tokens} tokens" if tokens != args.tokens else "",
            })
            details[f"{name} / {phase}"] = {
                "ours_ops": dict(o.ops), "ref_ops": dict(r.ops),
                "ours_syncs": dict(o.syncs), "ref_syncs": dict(r.syncs),
            }
            if args.details:
                print(f"\n{name} / {phase}\n  ours: {_top(o.ops)}\n  ref:  {_top(r.ops)}"
                      f"\n  ours syncs: {dict(o.syncs)}\n  ref syncs: {dict(r.syncs)}")
    print_table(rows, title=f"Quantizer ops and host syncs per step ({args.path} path, "
                            f"{args.tokens} tokens)")
    write_json(args.json, {"machine": info, "tokens": args.tokens, "path": args.path,
                           "rows": rows, "details": details})
    return rows


if __name__ == "__main__":
    main()
