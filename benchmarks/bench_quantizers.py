"""Quantizer families: visualtok vs vector-quantize-pytorch 1.32.0, side by side in one run.

For each setting: train-step throughput (forward + backward, k tokens/s), inference throughput
(eval, no grad), peak extra memory of one train step, ratios ours / reference, and the achieved
GFLOP/s of the nearest-neighbour matmul work (2 N K d per level) as a fraction of the fp32 matmul
peak measured in the same run. Every reference option is set explicitly to our settings (its
defaults differ: rotation trick on, EMA decay 0.8, LFQ commitment 0, ...).

    python benchmarks/bench_quantizers.py --tokens 2048 --json out.json
    python benchmarks/bench_quantizers.py --quick            # a smoke run
    python benchmarks/bench_quantizers.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import (  # noqa: E402
    machine_info,
    matmul_peak_gflops,
    peak_memory_bytes,
    print_table,
    time_call,
    time_interleaved,
    write_json,
)
from visualtok.quantize import QuantizerConfig, build_quantizer  # noqa: E402

BETA, DECAY = 0.25, 0.99


def ref_vq(dim: int, k: int, cosine: bool):
    from vector_quantize_pytorch import VectorQuantize

    return VectorQuantize(
        dim=dim, codebook_size=k, codebook_dim=None, heads=1, decay=DECAY, eps=1e-5,
        kmeans_init=False, use_cosine_sim=cosine, threshold_ema_dead_code=0, channel_last=True,
        commitment_weight=BETA, orthogonal_reg_weight=0.0, codebook_diversity_loss_weight=0.0,
        stochastic_sample_codes=False, straight_through=False, rotation_trick=False,
        sync_codebook=False, ema_update=True, learnable_codebook=False, affine_param=False,
    )


def ref_lfq(bits: int, group_size: int | None = None):
    """The reference LFQ over ``bits`` channels: one codebook of ``2**bits`` codes (its full
    entropy), or, with ``group_size``, ``bits // group_size`` codebooks of ``2**group_size`` codes
    each (the group-wise entropy visualtok computes: like for like)."""
    from vector_quantize_pytorch import LFQ

    g = group_size or bits
    return LFQ(
        dim=bits, codebook_size=2**g, entropy_loss_weight=0.1, commitment_loss_weight=BETA,
        diversity_gamma=1.0, num_codebooks=bits // g, codebook_scale=1.0,
        frac_per_sample_entropy=1.0,
        has_projections=False, soft_clamp_input_value=None, spherical=False,
        force_quantization_f32=True,
    )


def ref_fsq(levels):
    from vector_quantize_pytorch import FSQ

    return FSQ(levels=list(levels), dim=len(levels), num_codebooks=1, preserve_symmetry=False,
               noise_dropout=0.0, force_quantization_f32=True)


def ref_rvq(dim: int, k: int, q: int):
    from vector_quantize_pytorch import ResidualVQ

    return ResidualVQ(
        dim=dim, num_quantizers=q, codebook_size=k, codebook_dim=None, shared_codebook=False,
        quantize_dropout=False, decay=DECAY, eps=1e-5, kmeans_init=False, use_cosine_sim=False,
        threshold_ema_dead_code=0, commitment_weight=BETA, rotation_trick=False,
        stochastic_sample_codes=False, sync_codebook=False, ema_update=True,
        learnable_codebook=False,
    )


# name -> (our config, reference builder, matmul FLOPs per token or None, reference token cap)
SETTINGS: dict[str, tuple[dict, Callable, float | None, int | None]] = {
    "VQ cosine EMA 4096x12": (
        dict(type="vq", dim=12, codebook_size=4096, l2_normalize=True, ema=True, ema_decay=DECAY),
        lambda: ref_vq(12, 4096, True), 2 * 4096 * 12, None),
    "VQ EMA 16384x256": (
        dict(type="vq", dim=256, codebook_size=16384, ema=True, ema_decay=DECAY),
        lambda: ref_vq(256, 16384, False), 2 * 16384 * 256, None),
    "VQ EMA 65536x32": (
        dict(type="vq", dim=32, codebook_size=65536, ema=True, ema_decay=DECAY),
        lambda: ref_vq(32, 65536, False), 2 * 65536 * 32, None),
    # like for like: the reference with the same group-wise entropy (bits / g codebooks)
    "LFQ 2^14 (g=7) vs ref 2x2^7": (
        dict(type="lfq", dim=14, group_size=7, beta=BETA, entropy_weight=0.1,
             diversity_gamma=1.0, entropy_temperature=0.01),
        lambda: ref_lfq(14, 7), None, None),
    "LFQ 2^18 (g=9) vs ref 2x2^9": (
        dict(type="lfq", dim=18, group_size=9, beta=BETA, entropy_weight=0.1,
             diversity_gamma=1.0, entropy_temperature=0.01),
        lambda: ref_lfq(18, 9), None, None),
    # against the reference's full 2^bits entropy (a different, costlier computation)
    "LFQ 2^14 (g=7) vs ref full 2^14": (
        dict(type="lfq", dim=14, group_size=7, beta=BETA, entropy_weight=0.1,
             diversity_gamma=1.0, entropy_temperature=0.01),
        lambda: ref_lfq(14), None, None),
    "LFQ 2^18 (g=9) vs ref full 2^18": (
        dict(type="lfq", dim=18, group_size=9, beta=BETA, entropy_weight=0.1,
             diversity_gamma=1.0, entropy_temperature=0.01),
        lambda: ref_lfq(18), None, 256),
    "FSQ [8,8,8,5,5,5]": (
        dict(type="fsq", dim=6, levels=(8, 8, 8, 5, 5, 5)),
        lambda: ref_fsq((8, 8, 8, 5, 5, 5)), None, None),
    "RVQ EMA 8x1024x128": (
        dict(type="rvq", dim=128, codebook_size=1024, num_quantizers=8, ema=True,
             ema_decay=DECAY),
        lambda: ref_rvq(128, 1024, 8), 8 * 2 * 1024 * 128, None),
}


def ours_step(q, z: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        out = q(z)
        (out.z_q.square().mean() + out.losses["total"]).backward()
        z.grad = None
    return step


def ref_step(q, z: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        out = q(z)
        quantized, aux = out[0], (out[2] if len(out) > 2 else None)
        loss = quantized.square().mean()
        if aux is not None:
            loss = loss + aux.sum()
        loss.backward()
        z.grad = None
    return step


def infer(q, z: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            q(z)
    return run


def _steps(q, z: torch.Tensor, step_fn) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train step, inference call) closures; each puts ``q`` in the mode it times."""
    step = step_fn(q, z)
    call = infer(q, z.detach())

    def train_call() -> None:
        q.train()
        step()

    def infer_call() -> None:
        q.eval()
        call()

    return train_call, infer_call


def measure_pair(ours, z, ref, z_ref, device: str, rounds: int) -> tuple[dict, dict]:
    """Time ours and the reference in alternating rounds (A, B, A, B) in one process.

    Load that comes and goes on a shared machine then hits both sides in the same round. Besides
    wall time, the median process CPU seconds per call are kept: with ``--threads 1`` that is the
    work each side did, whatever share of a core the scheduler gave it.
    """
    out = {}
    calls = {"ours": _steps(ours, z, ours_step), "ref": _steps(ref, z_ref, ref_step)}
    for kind, idx, max_rounds in (("train", 0, rounds), ("infer", 1, 10 * rounds)):
        fns = {side: pair[idx] for side, pair in calls.items()}
        for fn in fns.values():  # warm-up past the first calls' allocations
            for _ in range(3):
                fn()
        # as many rounds as fit in about 20 s (at least 5, at most max_rounds)
        t0 = time.perf_counter()
        for fn in fns.values():
            fn()
        n_rounds = max(5, min(max_rounds, int(20.0 / max(time.perf_counter() - t0, 1e-6))))
        cpu: dict[str, float] = {}
        wall = time_interleaved(fns, device, warmup=0, repeats=n_rounds, cpu=cpu)
        for side in fns:
            out.setdefault(side, {})[f"{kind}_s"] = wall[side]
            out[side][f"{kind}_cpu_s"] = cpu[side]
    for side, (q, zz, step_fn) in {"ours": (ours, z, ours_step),
                                   "ref": (ref, z_ref, ref_step)}.items():
        q.train()
        gc.collect()
        out[side]["peak_mib"] = peak_memory_bytes(step_fn(q, zz), device) / 2**20
        n = zz.shape[0] * zz.shape[1]
        out[side].update(tokens=n, train_ktok_s=n / out[side]["train_s"] / 1e3,
                         infer_ktok_s=n / out[side]["infer_s"] / 1e3)
    return out["ours"], out["ref"]


def measure(q, z: torch.Tensor, step_fn, device: str, repeats: int) -> dict:
    """One side alone (the reference on a smaller batch, where it can't run ours')."""
    q.train()
    step = step_fn(q, z)
    train_s = time_call(step, device, warmup=1, repeats=repeats, min_time=0.3)
    gc.collect()
    mem = peak_memory_bytes(step, device)
    q.eval()
    infer_s = time_call(infer(q, z.detach()), device, warmup=3, repeats=repeats, min_time=0.3)
    n = z.shape[0] * z.shape[1]
    return {"train_ktok_s": n / train_s / 1e3, "infer_ktok_s": n / infer_s / 1e3,
            "peak_mib": mem / 2**20, "train_s": train_s, "tokens": n}


def _cpu_ratio(ours: dict, ref: dict, kind: str) -> float | str:
    """ours / reference throughput from process CPU seconds per call (interleaved runs only)."""
    if f"{kind}_cpu_s" not in ours:
        return "n/a"
    per_tok_ours = ours[f"{kind}_cpu_s"] / ours["tokens"]
    return ref[f"{kind}_cpu_s"] / ref["tokens"] / max(per_tok_ours, 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="256 tokens, 1 repeat, small settings")
    ap.add_argument("--only", default=None, help="substring: run only matching settings")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--rounds", type=int, default=100,
                    help="interleaved rounds (train; inference gets 10x as many)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokens, repeats = (256, 1) if args.quick else (args.tokens, args.repeats)
    args.rounds = 2 if args.quick else args.rounds
    device = args.device
    torch.manual_seed(0)
    peak = matmul_peak_gflops(device)
    info = machine_info(device)
    print(f"machine: {info}\nfp32 matmul peak: {peak:.1f} GFLOP/s; tokens per batch: {tokens}")
    rows = []
    for name, (cfg, make_ref, flops_per_tok, ref_cap) in SETTINGS.items():
        if args.only and args.only.lower() not in name.lower():
            continue
        if args.quick and name.startswith(("VQ EMA 65536", "LFQ 2^18 (g=9) vs ref full",
                                           "VQ EMA 16384")):
            continue
        d = cfg["dim"]
        z = torch.randn(4, tokens // 4, d, device=device, requires_grad=True)
        ours = build_quantizer(QuantizerConfig(**cfg)).to(device)
        ref_tokens = min(tokens, ref_cap) if ref_cap else tokens
        z_ref = torch.randn(4, ref_tokens // 4, d, device=device, requires_grad=True)
        ref = make_ref().to(device)
        if ref_tokens == tokens:
            r_ours, r_ref = measure_pair(ours, z, ref, z_ref, device, args.rounds)
        else:
            r_ours = measure(ours, z, ours_step, device, repeats)
            r_ref = measure(ref, z_ref, ref_step, device, 1)
        del ours, ref
        gc.collect()
        row = {
            "setting": name,
            "ours train ktok/s": r_ours["train_ktok_s"],
            "ref train ktok/s": r_ref["train_ktok_s"],
            "train x": r_ours["train_ktok_s"] / r_ref["train_ktok_s"],
            "ours infer ktok/s": r_ours["infer_ktok_s"],
            "ref infer ktok/s": r_ref["infer_ktok_s"],
            "infer x": r_ours["infer_ktok_s"] / r_ref["infer_ktok_s"],
            "ours MiB": r_ours["peak_mib"],
            "ref MiB": r_ref["peak_mib"],
            "mem ours/ref": r_ours["peak_mib"] / max(r_ref["peak_mib"], 1e-3),
            "ours %peak": (100 * flops_per_tok * r_ours["infer_ktok_s"] * 1e3 / 1e9 / peak
                           if flops_per_tok else "n/a"),
            "train x (CPU s)": _cpu_ratio(r_ours, r_ref, "train"),
            "infer x (CPU s)": _cpu_ratio(r_ours, r_ref, "infer"),
            "note": (f"ref on {ref_tokens} tokens, 1 repeat" if ref_tokens != tokens
                     else f"interleaved, <= {args.rounds} train / {10 * args.rounds} infer rounds"),
        }
        rows.append(row)
        print_table([row], title=name)
    print_table(rows, title="Quantizers: visualtok vs vector-quantize-pytorch 1.32.0")
    write_json(args.json, {"machine": info, "matmul_peak_gflops": peak, "tokens": tokens,
                           "rows": rows})


if __name__ == "__main__":
    main()
