"""Rate-distortion of a flexible-length tokenizer: quality vs number of tokens and bits.

    python eval/rate_distortion.py flextok_d18_d28 ../shared/data/images/kodak --out runs/rd
    python eval/rate_distortion.py titok_tiny imgs/ --random-init --features random-tiny \
        --out /tmp/rd

For tokenizers with ``supports_prefix`` each image is encoded once and decoded from the first ``k``
tokens for every ``k`` in ``--tokens`` (default: powers of two up to all tokens). PSNR and SSIM are
always computed; FID (against the same centre-cropped images) unless ``--no-fid``. Tokenizers
without prefix decoding give a single point. Writes ``results.json`` and ``rate_distortion.png``.

Adaptive mode (``--adaptive PREDICTOR --targets 16 17 18``): for each target PSNR every image gets
its own length, from the single-pass predictor and from the bisection search
(``visualtok.metrics.adaptive``); the mean tokens per image against the mean PSNR of those
prefixes (and the share meeting the target) are added to the results and drawn over the
fixed-length curve:

    python eval/rate_distortion.py titok_photo128_nested ../shared/data/images/kodak --no-fid \
        --adaptive runs/titok_nested_length --targets 16 17 18 --out runs/rd_adaptive
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    environment,
    load_tokenizer,
    run_cli,
    select_images,
    tokenizer_eval_parser,
    write_results,
)

from visualtok.data.image_io import iter_image_batches
from visualtok.metrics.fid import (
    build_feature_extractor,
    extract_features,
    feature_statistics,
    fid_from_features,
)
from visualtok.metrics.image import psnr, ssim


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = tokenizer_eval_parser(__doc__)
    ap.add_argument("--tokens", default=None,
                    help="comma-separated token counts (default: 1, 2, 4, ... and all tokens)")
    ap.add_argument("--no-fid", action="store_true", help="PSNR/SSIM only")
    ap.add_argument("--decode-steps", type=int, default=None,
                    help="flow decoders (FlexTok): Euler steps (default: the model's)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="flow decoders (FlexTok): guidance scale (default: the model's)")
    ap.add_argument("--seed", type=int, default=0, help="flow decoders: fixed sampling seed")
    ap.add_argument("--adaptive", default=None, metavar="PREDICTOR",
                    help="a trained LengthPredictor: add adaptive-length points (needs --targets)")
    ap.add_argument("--targets", type=float, nargs="+", default=None,
                    help="target PSNRs (dB) for --adaptive")
    args = ap.parse_args(argv)
    if (args.adaptive is None) != (args.targets is None):
        ap.error("--adaptive and --targets go together")
    return args


def decode_kwargs(tok, args: argparse.Namespace) -> dict:
    """Sampling settings for decoders that sample (FlexTok): fixed seed, steps, guidance."""
    import inspect

    params = inspect.signature(tok.decode).parameters
    if "generator" not in params:
        return {}
    kw = {"generator": torch.Generator().manual_seed(args.seed)}
    if args.decode_steps is not None:
        kw["steps"] = args.decode_steps
    if args.guidance is not None:
        kw["guidance_scale"] = args.guidance
    return kw


def token_counts(spec: str | None, total: int) -> list[int]:
    if spec:
        ks = sorted({int(s) for s in spec.split(",")})
        if ks[0] < 1 or ks[-1] > total:
            raise SystemExit(f"--tokens must lie in [1, {total}]; got {ks}")
        return ks
    ks, k = [], 1
    while k < total:
        ks.append(k)
        k *= 2
    return ks + [total]


def plot(points: list[dict], bits_per_token: float, path: Path, title: str,
         adaptive: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in ("psnr", "ssim", "fid") if points[0].get(m) is not None]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    ks = [p["tokens"] for p in points]
    for ax, m in zip(axes[0], metrics):
        ax.plot(ks, [p[m] for p in points], "o-", label="fixed k (all images)")
        if m == "psnr" and adaptive:
            for method, style in (("search", "s--"), ("predictor", "^-")):
                pts = [a for a in adaptive if a["method"] == method]
                ax.plot([a["mean_tokens"] for a in pts], [a["mean_psnr"] for a in pts], style,
                        label=f"adaptive, {method}")
                for a in pts:
                    ax.annotate(f"{a['target']:g} dB: {100 * a['met']:.0f}%",
                                (a["mean_tokens"], a["mean_psnr"]), fontsize=6,
                                textcoords="offset points", xytext=(3, -8))
            ax.legend(fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens")
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM", "fid": "FID"}[m])
        ax.grid(alpha=0.3)
        sec = ax.secondary_xaxis("top", functions=(lambda k: k * bits_per_token,
                                                   lambda b: b / bits_per_token))
        sec.set_xlabel("bits per image")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def adaptive_points(tok, paths: list[Path], args: argparse.Namespace) -> list[dict]:
    """Per target and method: mean tokens per image, mean PSNR, share meeting the target."""
    import visualtok
    from visualtok.metrics.adaptive import LengthPredictor, evaluate_adaptive

    if not (getattr(tok, "supports_prefix", False) and len(tok.token_shape) == 1):
        raise SystemExit(f"--adaptive needs a 1D tokenizer with prefix decoding; {args.model} "
                         "has none")
    pred = visualtok.load(args.adaptive)
    if not isinstance(pred, LengthPredictor):
        raise SystemExit(f"--adaptive {args.adaptive}: not a LengthPredictor checkpoint")
    pred = pred.eval().to(args.device)
    kw = dict(pred.config.decode_kwargs)  # the settings its curves were measured with
    images = torch.cat(list(iter_image_batches(paths, tok.image_size, args.batch_size)))
    images = images.to(args.device)
    out = []
    for target in args.targets:
        for method in ("search", "predictor"):
            r = evaluate_adaptive(tok, images, target, method, pred, kw)
            out.append({k: r[k] for k in ("method", "target", "mean_tokens", "mean_psnr", "met",
                                          "seconds", "lengths", "psnr")})
    return out


@torch.no_grad()
def main(argv: list[str] | None = None, extractor: torch.nn.Module | None = None) -> dict:
    args = parse_args(argv)
    tok = load_tokenizer(args)
    paths, subset = select_images(args)
    if len(paths) < 2:
        raise SystemExit(f"need at least 2 images in {args.images}; found {len(paths)}")
    flexible = bool(getattr(tok, "supports_prefix", False)) and len(tok.token_shape) == 1
    ks = token_counts(args.tokens, tok.num_tokens) if flexible else [tok.num_tokens]
    ext = None
    if not args.no_fid:
        ext = extractor or build_feature_extractor(args.features, args.fid_weights, args.device)
    t0 = time.perf_counter()
    acc = {k: {"psnr": [], "ssim": [], "feats": []} for k in ks}
    ref_feats = []
    for batch in iter_image_batches(paths, tok.image_size, args.batch_size):
        x = batch.to(args.device)
        codes = tok.encode(x)
        if ext is not None:
            ref_feats.append(extract_features(x, ext, device=args.device))
        for k in ks:
            recon = tok.decode(codes[:, :k] if flexible else codes, **decode_kwargs(tok, args))
            acc[k]["psnr"].append(psnr(x, recon).cpu())
            acc[k]["ssim"].append(ssim(x, recon).cpu())
            if ext is not None:
                acc[k]["feats"].append(extract_features(recon, ext, device=args.device))
    n = len(paths)
    bpt = tok.code_layout.bits_per_token
    ref_all = np.concatenate(ref_feats) if ext is not None else None
    ref = feature_statistics(ref_all, ext.name) if ext is not None else None
    points = []
    for k in ks:
        p = {"tokens": k, "bits": k * bpt, "psnr": float(torch.cat(acc[k]["psnr"]).mean()),
             "ssim": float(torch.cat(acc[k]["ssim"]).mean()), "fid": None}
        if ref is not None:
            p["fid"] = fid_from_features(np.concatenate(acc[k]["feats"]), ref_all)
        points.append(p)
    results = {
        "model": args.model, "random_init": args.random_init, "images": str(args.images),
        "subset": subset, "num_samples": n, "image_size": list(tok.image_size),
        "flexible": flexible,
        "bits_per_token": bpt, "features": ext.name if ext is not None else None,
        "fid_reference": f"the {n} evaluated images" if ext is not None else None,
        "points": points, "seconds": time.perf_counter() - t0,
        "decode": {k: v for k, v in decode_kwargs(tok, args).items() if k != "generator"}
        | ({"seed": args.seed} if decode_kwargs(tok, args) else {}),
        "environment": environment(args.device),
    }
    if not flexible:
        results["note"] = "tokenizer does not decode token prefixes: one point only"
    if args.adaptive is not None:
        results["adaptive"] = adaptive_points(tok, paths, args)
    write_results(args.out, results)
    plot(points, bpt, args.out / "rate_distortion.png", f"{args.model} (n = {n})",
         results.get("adaptive"))
    for a in results.get("adaptive", []):
        print(f"adaptive {a['method']:>9} target {a['target']:g} dB: {a['mean_tokens']:.1f} "
              f"tokens/image, PSNR {a['mean_psnr']:.3f}, met {100 * a['met']:.1f}%, "
              f"{a['seconds']:.3f} s/image")
    for p in points:
        fid = "" if p["fid"] is None else f"   FID[{n}] {p['fid']:.4g}"
        print(f"{p['tokens']:5d} tokens {p['bits']:8.0f} bits   PSNR {p['psnr']:.3f}   "
              f"SSIM {p['ssim']:.4f}{fid}")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "rate_distortion.py"))
