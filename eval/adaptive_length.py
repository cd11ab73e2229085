"""Adaptive length on held-out images: the single-pass predictor against the bisection search.

    python eval/adaptive_length.py runs/flextok_tiny/model runs/flextok_tiny_length \
        ../shared/data/images/kodak --targets 16 17 18 --out runs/adaptive

For each target PSNR every image gets k from the search (bisection with decodes) and from the
predictor (one encode, no decode); both prefixes are then decoded to check the target. Decoding
uses the predictor's recorded settings (fixed seed, steps, guidance). Prints a Markdown table
(success rate, mean tokens, seconds per image, speed-up) and writes ``results.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

import visualtok
from visualtok.data.image_io import iter_image_batches, list_images
from visualtok.metrics.adaptive import evaluate_adaptive


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer")
    ap.add_argument("predictor")
    ap.add_argument("images", type=Path)
    ap.add_argument("--targets", type=float, nargs="+", required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tok = visualtok.load(args.tokenizer).eval()
    pred = visualtok.load(args.predictor).eval()
    kw = dict(pred.config.decode_kwargs)
    images = torch.cat(list(iter_image_batches(list_images(args.images), tok.image_size[0], 32)))
    rows = []
    for target in args.targets:
        res = {m: evaluate_adaptive(tok, images, target, m, pred, kw)
               for m in ("search", "predictor")}
        s, p = res["search"], res["predictor"]
        rows.append(dict(target=target, images=images.shape[0], search_met=s["met"],
                         predictor_met=p["met"], search_tokens=s["mean_tokens"],
                         predictor_tokens=p["mean_tokens"],
                         token_ratio=p["mean_tokens"] / s["mean_tokens"],
                         search_s=s["seconds"], predictor_s=p["seconds"],
                         speedup=s["seconds"] / p["seconds"], detail=res))
    cols = ["target", "images", "search_met", "predictor_met", "search_tokens",
            "predictor_tokens", "token_ratio", "search_s", "predictor_s", "speedup"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")
    payload = {"tokenizer": args.tokenizer, "predictor": args.predictor,
               "images": str(args.images), "decode": kw, "margin": pred.config.margin,
               "rows": rows}
    if args.out is not None:
        write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
