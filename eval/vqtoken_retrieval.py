"""VQToken vs same-token-count uniform pooling on real clips: a labelled retrieval proxy.

No video LLM runs here, so the paper's video-QA accuracy is replaced by two proxy scores
(``visualtok.metrics.video_retrieval``):

* **clip retrieval accuracy**: every clip of ``--clips`` is cut into windows of ``2 * frames``
  frames; the even frames of a window are reduced (VQToken codes, or uniform pooling to the same
  number of tokens) and must retrieve the *odd* frames' full features of the same window among all
  windows' (top-1);
* **feature-reconstruction cosine**: the reduced tokens rebuilt into the even frames' grid
  (``codes[hash_map]``; pooled tokens broadcast over their chunk) vs the features.

TokDense (arXiv:2503.16980 Eq. 2) = retrieval accuracy (%) / tokens per clip, here with the proxy
accuracy. Features: ``--features inception`` (FID Inception ``mixed_7``, 17x17 x 768; labelled
"Inception features", not SigLIP), ``tokenizer`` (the shipped ``titok_photo128`` encoder's patch
outputs) or ``pixels`` (a fixed random map of 14-px patches, no weights).

Command: ``python eval/vqtoken_retrieval.py --out runs/vqtoken_retrieval [--features inception]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from visualtok.metrics.video_retrieval import reconstruction_cosine, retrieval_accuracy  # noqa
from visualtok.video.io import frame_times, read_video  # noqa: E402
from visualtok.video.vqtoken import (  # noqa: E402
    VQTokenConfig,
    compression_ratio,
    tok_dense,
    uniform_pool_grid,
    uniform_pool_tokens,
    vqtoken_compress,
)

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "video"
# distinct content only (the .webm twins of flower / stream-of-water are the same footage)
DEFAULT_CLIPS = ["bbb_0_30s_720p.webm", "bbb_432_433s_720p.webm", "mdn_flower.mp4",
                 "mdn_friday.mp4", "mdn_stream-of-water.mp4"]


def build_extractor(name: str):
    from visualtok.metrics import frame_features as ff

    if name == "inception":
        return ff.InceptionSpatialFeatures("mixed_7")
    if name == "tokenizer":
        import visualtok

        return ff.TokenizerFeatures(visualtok.load("titok_photo128"), "patches")
    if name == "pixels":
        return ff.PixelPatchFeatures(grid=16, patch=14)
    raise ValueError(f"--features must be inception | tokenizer | pixels; got {name!r}")


def windows(paths: list[Path], frames: int, stride: int, max_windows: int | None):
    """(clip name, first frame) of every window of ``2 * frames`` frames, ``stride`` apart."""
    out = []
    for p in paths:
        n = len(frame_times(p))
        for start in range(0, n - 2 * frames + 1, stride):
            out.append((p, start))
    return out[:max_windows]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", nargs="*", default=None, help="video files (default: shared clips)")
    ap.add_argument("--features", default="inception", choices=["inception", "tokenizer", "pixels"])
    ap.add_argument("--frames", type=int, default=8, help="frames per query (and per gallery item)")
    ap.add_argument("--stride", type=int, default=48, help="frames between window starts")
    ap.add_argument("--size", type=int, default=224, help="frames centre-cropped to this side")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--kmin", type=int, default=4)
    ap.add_argument("--kmax", type=int, default=32)
    ap.add_argument("--fixed-k", type=int, default=None, help="fixed K instead of the elbow")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    paths = [Path(c) for c in args.clips] if args.clips else [SHARED / c for c in DEFAULT_CLIPS]
    extractor = build_extractor(args.features)
    wins = windows(paths, args.frames, args.stride, args.max_windows)
    if len(wins) < 2:
        raise SystemExit(f"need >= 2 windows; got {len(wins)} (lower --frames or --stride)")
    cfg = VQTokenConfig(min_clusters=args.kmin, max_clusters=args.kmax,
                        num_clusters=args.fixed_k, seed=args.seed)
    rows = {"vqtoken": [], "uniform_pool": []}
    queries = {"vqtoken": [], "uniform_pool": []}
    gallery = []
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; this only keeps the script importable without it
        def tqdm(x, **_):
            return x
    for p, start in tqdm(wins, desc="windows"):
        idx = torch.arange(start, start + 2 * args.frames)
        clip = read_video(p, indices=idx, size=args.size, crop=args.size)
        f_even, f_odd = extractor(clip[0::2]), extractor(clip[1::2])
        t, n, _ = f_even.shape
        vq = vqtoken_compress(f_even, cfg)
        pooled = uniform_pool_tokens(f_even, vq.num_tokens)
        gallery.append(f_odd)
        queries["vqtoken"].append(vq.codes)
        queries["uniform_pool"].append(pooled)
        rows["vqtoken"].append((vq.num_tokens, t * n, reconstruction_cosine(vq.reconstruct(),
                                                                            f_even)))
        rows["uniform_pool"].append((vq.num_tokens, t * n, reconstruction_cosine(
            uniform_pool_grid(pooled, t, n), f_even)))
    results = {"features": args.features, "windows": len(wins), "frames_per_query": args.frames,
               "clips": [p.name for p in paths], "methods": {}}
    for name in rows:
        acc, _ = retrieval_accuracy(queries[name], gallery)
        tokens = sum(r[0] for r in rows[name]) / len(rows[name])
        full = rows[name][0][1]
        results["methods"][name] = {
            "tokens_per_clip": tokens, "full_tokens": full,
            "compression_ratio": compression_ratio(full, 1) * tokens,
            "retrieval_top1": acc, "recon_cosine": sum(r[2] for r in rows[name]) / len(rows[name]),
            "tokdense_proxy": tok_dense(100 * acc, tokens),
        }
    print(f"{len(wins)} windows of {args.frames}+{args.frames} frames, {args.features} features")
    print("| method | tokens / clip | token % | retrieval top-1 | recon cosine | TokDense* |")
    print("|---|---|---|---|---|---|")
    for name, m in results["methods"].items():
        print(f"| {name} | {m['tokens_per_clip']:.2f} of {m['full_tokens']} | "
              f"{100 * m['compression_ratio']:.2f}% | {100 * m['retrieval_top1']:.1f}% | "
              f"{m['recon_cosine']:.3f} | {m['tokdense_proxy']:.2f} |")
    if args.out is not None:
        write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
