"""GPT-B sampling speed: static-KV-cache vs uncached loop, with and without CFG.

Model: ``gpt_b`` (LlamaGen-B architecture, 111M, vocab 16384, fp32, random weights). For each
(tokens, batch) it times a full ``GPT.generate`` call and reports tokens/s, images/s and ms/step.
The uncached loop (re-running the whole prefix every step, what a naive sampler does) is measured
side by side in the same run; above ``--max-uncached-tokens`` it samples only that many tokens and
reports the per-step time of those steps (nothing is extrapolated; late steps cost more, so the
cached/uncached ratio printed for long sequences is a lower bound).

No figure from another run is divided into these: the LlamaGen reference is timed in the same run
with ``--official`` (below). ``uncached last-step ms`` is the measured cost of the uncached step
that samples the final token (one pass over the whole prefix), against the cached mean step.
On CUDA, ``--compile`` wraps the decode step with ``torch.compile`` and the table adds the
memory-bandwidth bound per step: weight bytes / ``--bandwidth``.

    python benchmarks/bench_generator.py --tokens 32 256 --batch 1 8 --json out.json
    python benchmarks/bench_generator.py --device cuda --compile --batch 1 8 32

With ``--official PATH`` (a checkout of FoundationVision/LlamaGen, see README.md) the reference is
LlamaGen's own ``GPT_B`` and ``generate`` in the same process: random init, its weights mapped into
ours (``benchmarks.official.llamagen_gpt_state_dict``) with its position table, greedy tokens
checked identical from the same class labels (with and without CFG), then both samplers timed
interleaved (A, B, A, B) at each batch, with and without CFG:

    python benchmarks/bench_generator.py --official /tmp/official/LlamaGen --tokens 256 --batch 1 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import (  # noqa: E402
    machine_info,
    print_table,
    time_call,
    time_interleaved,
    write_json,
)
from benchmarks.official import build_official_gpt, load_average  # noqa: E402
from visualtok import create_model  # noqa: E402
from visualtok.nn.linear import cpu_linear_backend, set_cpu_linear_backend  # noqa: E402


def time_generate(
    model,
    batch: int,
    tokens: int,
    cfg: float | None,
    use_cache: bool,
    compile: bool | str,
    device: str,
) -> float:
    labels = torch.arange(batch, device=device) % model.config.num_classes
    gen = torch.Generator(device=device).manual_seed(0)
    kwargs = dict(
        num_tokens=tokens, cfg_scale=cfg, generator=gen, use_cache=use_cache, top_k=0, top_p=1.0
    )
    if compile:
        kwargs["compile"] = True
    model.generate(labels, **{**kwargs, "num_tokens": min(tokens, 4)})  # warm-up (and compile)
    # the cached loop is cheap: median of 3 full runs; the uncached one is timed once
    repeats = 3 if use_cache else 1
    return time_call(lambda: model.generate(labels, **kwargs), device, warmup=0, repeats=repeats)


@torch.no_grad()
def time_uncached_last_step(model, batch: int, tokens: int, device: str) -> float:
    """Seconds of the uncached step that samples token ``tokens``: a full pass over the prefix."""
    x = torch.randn(batch, tokens, model.config.dim, device=device)

    def run() -> None:
        model.head.logits(model.trunk(x)[:, -1])

    return time_call(run, device, warmup=1, repeats=1)


@torch.no_grad()
def main_official(args) -> dict:
    """Same-run comparison with LlamaGen's code on identical (mapped) weights."""
    if args.device != "cpu":
        raise ValueError("--official runs on CPU only")
    pair = build_official_gpt(args.official)
    model = pair.ours
    info = machine_info(args.device)
    info["cpu_linear"] = cpu_linear_backend()
    info["load_average_start"] = load_average()
    print(f"# GPT-B vs LlamaGen GPT-B on {info}", flush=True)
    n = args.tokens[0]
    labels = torch.tensor([207, 360, 387, 974, 88, 979, 417, 279])[: args.parity_batch]
    parity = {}
    for cfg in (None, *args.cfg):
        ref = pair.generate(labels, args.parity_tokens, cfg, greedy=True).long()
        ours = model.generate(labels, num_tokens=args.parity_tokens, cfg_scale=cfg,
                              temperature=0.0)[..., 0]
        parity[cfg or "-"] = float((ref == ours).float().mean())
    print(f"greedy tokens identical (batch {len(labels)}, {args.parity_tokens} tokens): {parity}")
    if parity["-"] < 1.0:
        raise SystemExit("parity failed: greedy tokens differ without CFG; not timing")

    rows = []
    for b in args.batch:
        for cfg in (None, *args.cfg):
            lab = torch.arange(b) * 37 % 1000
            gen = torch.Generator().manual_seed(0)

            def ours_fn(k=n, lab=lab, cfg=cfg, gen=gen):
                return model.generate(lab, num_tokens=k, cfg_scale=cfg, top_k=0, top_p=1.0,
                                      generator=gen)

            def ref_fn(k=n, lab=lab, cfg=cfg):
                return pair.generate(lab, k, cfg)

            ours_fn(4), ref_fn(4)  # warm-up on a short sequence
            load0 = load_average()
            cpu: dict[str, float] = {}
            t = time_interleaved({"visualtok": ours_fn, "LlamaGen": ref_fn}, warmup=0,
                                 repeats=args.repeats, cpu=cpu)
            row = {"tokens": n, "batch": b, "cfg": cfg or "-",
                   "LlamaGen tok/s": b * n / t["LlamaGen"],
                   "visualtok tok/s": b * n / t["visualtok"],
                   "visualtok / LlamaGen": t["LlamaGen"] / t["visualtok"],
                   "LlamaGen ms/step": t["LlamaGen"] / n * 1e3,
                   "visualtok ms/step": t["visualtok"] / n * 1e3,
                   "LlamaGen CPU ms/step": cpu["LlamaGen"] / n * 1e3,
                   "visualtok CPU ms/step": cpu["visualtok"] / n * 1e3,
                   "CPU time visualtok / LlamaGen": cpu["LlamaGen"] / cpu["visualtok"],
                   "greedy = LlamaGen": parity[cfg or "-"],
                   "load avg (1m) before/after": f"{load0[0]:.1f}/{load_average()[0]:.1f}"}
            rows.append(row)
            print(row, flush=True)
    if args.profile:
        profile_contenders(model, pair, args.profile, n)
    info["load_average_end"] = load_average()
    title = (f"GPT-B vs LlamaGen, same run, interleaved x{args.repeats}, {n} tokens, "
             f"{torch.get_num_threads()} threads, load average {info['load_average_start']} -> "
             f"{info['load_average_end']}")
    print_table(rows, list(rows[0]), title=title)
    payload = {"machine": info, "args": vars(args), "parity": parity, "rows": rows}
    write_json(args.json, payload)
    return payload


def profile_contenders(model, pair, batches: list[int], n: int) -> None:
    """torch.profiler tables (top ops by self CPU time) of one ``n``-token generate per side at
    each batch: where the remaining time goes (GEMM share against the rest)."""
    from torch.profiler import ProfilerActivity, profile

    for b in batches:
        lab = torch.arange(b) * 37 % 1000
        for name, fn in (("visualtok", lambda lab=lab: model.generate(lab, num_tokens=n)),
                         ("LlamaGen", lambda lab=lab: pair.generate(lab, n, None))):
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            gemm = sum(e.self_cpu_time_total for e in events
                       if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::mv",
                                    "mkldnn::_linear_pointwise"))
            print(f"\n## profile: {name}, batch {b}, {n} tokens: GEMM ops {gemm / total:.1%} "
                  f"of self CPU time ({total / n / 1e3:.1f} ms/step under the profiler)")
            print(events.table(sort_by="self_cpu_time_total", row_limit=8), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--cfg", type=float, nargs="*", default=[2.0], help="CFG scales for extra rows")
    ap.add_argument("--cfg-tokens", type=int, default=256, help="sequence length of the CFG rows")
    ap.add_argument("--cfg-batch", type=int, nargs="*", default=None, help="batches of CFG rows")
    ap.add_argument(
        "--max-uncached-tokens",
        type=int,
        default=32,
        help="uncached loop samples at most this many tokens (0 = skip uncached)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the cached decode step")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="memory bandwidth B/s (H100)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--cpu-linear",
        choices=["onednn", "aten"],
        default=None,
        help="CPU fp32 GEMM backend (visualtok.nn.linear); default: the library's choice",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--official", default=None, metavar="PATH",
                    help="checkout of FoundationVision/LlamaGen: time LlamaGen's code itself")
    ap.add_argument("--repeats", type=int, default=2, help="--official: interleaved rounds")
    ap.add_argument("--parity-tokens", type=int, default=256, help="--official: greedy check")
    ap.add_argument("--parity-batch", type=int, default=2, help="--official: labels in the check")
    ap.add_argument("--profile", type=int, nargs="*", default=[], metavar="BATCH",
                    help="--official: torch.profiler table of both samplers at these batches")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_linear:
        set_cpu_linear_backend(args.cpu_linear)
    if args.official:
        if args.batch == ap.get_default("batch"):
            args.batch = [1, 8]
        if args.tokens == ap.get_default("tokens"):
            args.tokens = [256]
        return main_official(args)

    torch.manual_seed(0)
    model = create_model("gpt_b").to(args.device).eval()
    with torch.no_grad():  # random (not zero) output head, as a trained model
        torch.nn.init.normal_(model.head.output.weight, std=0.02)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bound_ms = weight_bytes / args.bandwidth * 1e3
    info = machine_info(args.device)
    info["cpu_linear"] = cpu_linear_backend()
    info["load_average_start"] = load_average()  # the project CPU is shared: say how busy it was
    print(f"# GPT-B sampling, {n_params / 1e6:.1f}M params fp32 on {info}")

    rows = []
    runs = [(n, b, None) for n in args.tokens for b in args.batch]
    runs += [(args.cfg_tokens, b, s) for s in args.cfg for b in (args.cfg_batch or args.batch)]
    first_k: dict[tuple[int, int], float] = {}  # (batch, k) -> seconds: the first k steps repeat
    for n, b, cfg in runs:
        row = {"tokens": n, "batch": b, "cfg": cfg or "-"}
        compile_arg = (args.compile_mode or True) if args.compile else False
        sec = time_generate(model, b, n, cfg, True, compile_arg, args.device)
        row["cached tok/s"] = b * n / sec
        row["cached img/s"] = b / sec
        row["cached ms/step"] = sec / n * 1e3
        if args.device != "cpu":
            row["bw bound ms/step"] = bound_ms
        if args.max_uncached_tokens and cfg is None:
            k = min(n, args.max_uncached_tokens)
            if (b, k) not in first_k:
                first_k[(b, k)] = time_generate(model, b, k, cfg, False, False, args.device)
            usec = first_k[(b, k)]
            row["uncached steps"] = k
            row["uncached tok/s"] = b * k / usec
            row["uncached ms/step"] = usec / k * 1e3
            row["cached/uncached"] = row["uncached ms/step"] / row["cached ms/step"]
            last = time_uncached_last_step(model, b, n, args.device) * 1e3
            row["uncached last-step ms"] = last
            row["last-step ratio"] = last / row["cached ms/step"]
        rows.append(row)
        print(row, flush=True)

    columns = ["tokens", "batch", "cfg", "cached tok/s", "cached img/s", "cached ms/step"]
    columns += ["bw bound ms/step"] if args.device != "cpu" else []
    columns += [
        "uncached steps",
        "uncached ms/step",
        "uncached tok/s",
        "cached/uncached",
        "uncached last-step ms",
        "last-step ratio",
    ]
    info["load_average_end"] = load_average()
    title = (f"GPT-B sampling ({args.device}, compile={args.compile}), load average "
             f"{info['load_average_start']} -> {info['load_average_end']}")
    print_table(rows, columns, title=title)
    payload = {
        "machine": info,
        "params": n_params,
        "weight_bytes": weight_bytes,
        "bandwidth": args.bandwidth,
        "args": vars(args),
        "rows": rows,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
