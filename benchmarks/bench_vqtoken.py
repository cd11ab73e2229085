"""VQToken adaptive K-means sweep: visualtok (batched over K, bounded rescoring) vs the release's
algorithm rebuilt with its loops, same seeds and same initial centres, in the same run.

Features have the paper's shape, 32 frames x 729 tokens x 896-d (LLaVA-OneVision SigLIP: 27x27
patches of 14 px at 378 px, projected to 896), but no SigLIP weights exist here: they are *real
frames* (``../shared/data/video``, uniformly sampled) cut into 27x27 patches of 14 px whose pixels
go through one fixed random linear map to 896-d (labelled "SigLIP-shaped pixel-patch features").

The reference rebuilds ``VQToken/cluster.py`` as released: per K in the sweep, K-means++ with
``torch.cdist`` to every chosen centre at every draw, Lloyd with a Python loop over clusters
(``X[labels == i].mean(0)``), cosine distances recomputed with fresh normalisation, stop when
``||C_new - C|| < tol``; distortion ``((X - C[labels]) ** 2).sum()``. Its one change: the K-means++
draw inverts the same uniform numbers through the cumulative weights (float64) that ours uses,
instead of ``torch.multinomial`` on the global RNG, so both get the same initial centres. The
release's final re-fit at the chosen K is not timed (conservative for the ratio).

Checks: identical labels for every K, and the K each elbow rule picks (ours offset correctly, the
release's ``argmax + 2 + 2`` clamped at 12).

Both sides run with the same number of threads (``--threads``, default 1: on the shared 2-core
machine, oversubscribed by other jobs, two-thread parallel regions stall on their slowest thread);
wall and process CPU seconds are both reported, the ratio from each.

Command: ``python benchmarks/bench_vqtoken.py [--frames 32 --threads 1 --json runs/bench.json]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import machine_info, write_json  # noqa: E402
from visualtok.quantize.search import l2_normalize  # noqa: E402
from visualtok.video.io import read_video  # noqa: E402
from visualtok.video.vqtoken import elbow_k, kmeans_pp_chain, kmeans_sweep  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "video"


def siglip_shaped_features(path: Path, frames: int, grid: int = 27, patch: int = 14,
                           dim: int = 896, seed: int = 0) -> torch.Tensor:
    """``[T, grid*grid, dim]``: real frames -> 14-px patches -> one fixed random linear map."""
    side = grid * patch
    video = read_video(path, frames, size=side, crop=side)  # [T, 3, 378, 378]
    p = video.unfold(2, patch, patch).unfold(3, patch, patch)  # [T, 3, g, g, p, p]
    p = p.permute(0, 2, 3, 1, 4, 5).reshape(frames, grid * grid, 3 * patch * patch)
    w = torch.randn(3 * patch * patch, dim, generator=torch.Generator().manual_seed(seed))
    return (p - 0.5) @ w / (3 * patch * patch) ** 0.5


# ------------------------------------------------------------------ the release, rebuilt
def _release_kmeanspp(X: torch.Tensor, k: int, u: torch.Tensor, eps: float = 1e-6):
    n = X.size(0)
    chosen = [X[min(int(u[0] * n), n - 1)]]
    for j in range(1, k):
        dists = torch.cdist(X, torch.stack(chosen), p=2).min(dim=1)[0]
        weights = (dists.pow(2).clamp(min=0.0) + eps).double()
        cdf = torch.cumsum(weights, 0)  # the one change: invert the shared uniforms
        i = min(int(torch.searchsorted(cdf, u[j] * cdf[-1], right=True)), n - 1)
        chosen.append(X[i])
    return torch.stack(chosen)


def _release_lloyd(X: torch.Tensor, C: torch.Tensor, max_iter: int, tol: float):
    k = C.shape[0]
    labels = None
    for _ in range(max_iter):
        Xn = X / X.norm(dim=-1, keepdim=True)
        Cn = C / C.norm(dim=-1, keepdim=True)
        labels = torch.argmin(1 - torch.mm(Xn, Cn.T), dim=1)
        new = []
        for i in range(k):  # the release's loop over clusters
            pts = X[labels == i]
            new.append(C[i] if pts.numel() == 0 else pts.mean(dim=0))
        new = torch.stack(new)
        if torch.norm(C - new) < tol:
            break
        C = new
    return labels, C


def release_sweep(X, ks, u, max_iter, tol):
    labels, distortion = [], []
    for k in ks:
        lab, C = _release_lloyd(X, _release_kmeanspp(X, k, u), max_iter, tol)
        labels.append(lab)
        distortion.append(((X - C[lab]) ** 2).sum().item())
    return torch.stack(labels), distortion


def release_elbow(ks, distortion):
    diffs = torch.tensor(distortion[1:]) - torch.tensor(distortion[:-1])
    second = diffs[1:] - diffs[:-1]
    return max(int(torch.argmax(second)) + 2 + 2, 12)  # as released: no offset by ks[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", default=str(SHARED / "bbb_0_30s_720p.webm"))
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--kmin", type=int, default=12)
    ap.add_argument("--kmax", type=int, default=32)
    ap.add_argument("--max-iters", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    feats = siglip_shaped_features(Path(args.clip), args.frames)
    t, n, d = feats.shape
    X = l2_normalize(feats.reshape(t * n, d)).contiguous()
    ks = list(range(args.kmin, args.kmax + 1))
    print(f"features {t} x {n} x {d} ({t * n} tokens), K sweep {ks[0]}..{ks[-1]}")

    g = torch.Generator().manual_seed(args.seed)
    u = torch.rand(max(ks), generator=torch.Generator().manual_seed(args.seed),
                   dtype=torch.float64)  # the uniforms our chain draws from the same seed
    t0, c0 = time.perf_counter(), time.process_time()
    seeds = kmeans_pp_chain(X, max(ks), g)
    ours = kmeans_sweep(X, ks, max_iters=args.max_iters, tol=args.tol, seeds=seeds)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    print(f"visualtok: {t_ours:.2f} s wall, {c_ours:.2f} s CPU; iterations "
          f"{ours.iterations.tolist()}")
    t0, c0 = time.perf_counter(), time.process_time()
    ref_labels, ref_dist = release_sweep(X, ks, u, args.max_iters, args.tol)
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
    print(f"release loops: {t_ref:.2f} s wall, {c_ref:.2f} s CPU")
    same = [bool(torch.equal(a, b)) for a, b in zip(ours.labels, ref_labels)]
    agree = float((ours.labels == ref_labels).float().mean())
    rel = max(abs(a - b) / b for a, b in zip(ours.distortion.tolist(), ref_dist))
    k_ours, k_rel = elbow_k(ks, ours.distortion), release_elbow(ks, ref_dist)
    print(f"same labels for every K: {all(same)} ({sum(same)}/{len(ks)}; token agreement "
          f"{agree:.6f}); max relative distortion difference {rel:.2e}")
    print(f"speed ratio release / visualtok: {t_ref / t_ours:.1f}x wall, {c_ref / c_ours:.1f}x CPU "
          f"({args.threads} thread(s))")
    print(f"elbow K: visualtok {k_ours} (offset by ks[0]); release rule {k_rel}")
    write_json(args.json, dict(
        machine=machine_info("cpu"), shape=[t, n, d], ks=ks, threads=args.threads,
        seconds_ours=t_ours, seconds_release=t_ref, ratio=t_ref / t_ours, cpu_seconds_ours=c_ours,
        cpu_seconds_release=c_ref, cpu_ratio=c_ref / c_ours,
        same_labels=same, token_agreement=agree,
        iterations=ours.iterations.tolist(), k_ours=k_ours, k_release=k_rel,
        distortion=ours.distortion.tolist()))


if __name__ == "__main__":
    main()
