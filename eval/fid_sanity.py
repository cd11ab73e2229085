"""Sanity check of the FID pipeline on real photos.

Splits an image folder into two disjoint halves (alternate files, sorted), centre-crops to
``--size``, and reports FID(half A, half B) against FID(half A, half B heavily blurred). With a
working pipeline the first is clearly lower than the second.

    python eval/fid_sanity.py ../shared/data/images --size 256 --out runs/fid_sanity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_subset_args, select_images, write_results

from visualtok.data.image_io import iter_image_batches
from visualtok.metrics.fid import (
    build_feature_extractor,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, 3, H, W]`` (reflect padding)."""
    r = max(1, int(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).to(images)
    y = F.pad(images, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3).clamp(0, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--blur-sigma", type=float, default=4.0)
    add_subset_args(ap)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--features", default="inception", choices=["inception", "random-tiny"])
    ap.add_argument("--out", type=Path, default=None, help="directory for results.json")
    args = ap.parse_args(argv)

    args.images = args.folder
    paths, subset = select_images(args)
    ext = build_feature_extractor(args.features, device=args.device)
    t0 = time.perf_counter()
    feats = {"a": [], "b": [], "b_blur": []}
    for half, sub in (("a", paths[0::2]), ("b", paths[1::2])):
        for batch in iter_image_batches(sub, args.size, args.batch_size):
            feats[half].append(extract_features(batch, ext, device=args.device))
            if half == "b":
                blurred = gaussian_blur(batch, args.blur_sigma)
                feats["b_blur"].append(extract_features(blurred, ext, device=args.device))
    f = {k: np.concatenate(v) for k, v in feats.items()}
    stats_a = feature_statistics(f["a"], ext.name)
    res = {
        "folder": str(args.folder),
        "subset": subset,
        "size": args.size,
        "blur_sigma": args.blur_sigma,
        "features": ext.name,
        "num_a": len(f["a"]),
        "num_b": len(f["b"]),
        "fid_a_vs_b": frechet_distance(stats_a, feature_statistics(f["b"], ext.name)),
        "fid_a_vs_b_blurred": fid_from_features(f["b_blur"], stats_a),
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(res, indent=2))
    if args.out is not None:
        write_results(args.out, res)
    return res


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
