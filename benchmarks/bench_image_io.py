"""Image loading for eval and datasets: PIL decode + crop + resize on uint8, then float (ours now)
vs decode to float and torch bicubic on the full-resolution tensor (the previous path).

Both give the same antialiased bicubic (a = -0.5); the table reports their time per image (decode
included), the speed ratio, the same for the crop + resize step alone (images decoded beforehand),
and how far apart the results are (PSNR between the two, max |difference| in uint8 levels). Runs
are interleaved (old, new) pairs; medians after one warm-up pass.

    python benchmarks/bench_image_io.py --json runs/bench_image_io.json
    python benchmarks/bench_image_io.py --folders ../shared/data/images/kodak --sizes 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, write_json  # noqa: E402
from visualtok.data.image_io import (  # noqa: E402
    center_crop_resize,
    list_images,
    load_image,
    open_image,
    pil_to_tensor,
)
from visualtok.metrics.image import psnr  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "images"


def old_path(paths: list[Path], size: int) -> torch.Tensor:
    return torch.stack([center_crop_resize(load_image(p), size) for p in paths])


def new_path(paths: list[Path], size: int) -> torch.Tensor:
    return torch.stack([load_image(p, size) for p in paths])


def resize_all(images: list, size: int) -> list[torch.Tensor]:
    return [center_crop_resize(x, size) for x in images]


def _interleaved(fns, repeats: int) -> list[float]:
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folders", nargs="+", type=Path,
                    default=[SHARED / "kodak", SHARED / "debian_wallpapers"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--max-images", type=int, default=12, help="images per folder (strided)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, results = [], []
    for folder in args.folders:
        files = list_images(folder)
        step = max(1, len(files) // args.max_images)
        paths = files[::step][: args.max_images]
        for size in args.sizes:
            old, new = old_path(paths, size), new_path(paths, size)  # warm-up, and the outputs
            t_old, t_new = _interleaved(
                [partial(old_path, paths, size), partial(new_path, paths, size)], args.repeats)
            ms_old, ms_new = t_old / len(paths) * 1e3, t_new / len(paths) * 1e3
            pils = [open_image(p) for p in paths]
            floats = [pil_to_tensor(im) for im in pils]
            r_old, r_new = _interleaved(
                [partial(resize_all, floats, size), partial(resize_all, pils, size)], args.repeats)
            rs_old, rs_new = r_old / len(paths) * 1e3, r_new / len(paths) * 1e3
            agree = float(psnr(old, new).min())
            max_levels = float((old - new).abs().max() * 255)
            res = {"folder": str(folder), "images": len(paths), "size": size,
                   "ms_per_image_old": ms_old, "ms_per_image_new": ms_new,
                   "speedup": ms_old / ms_new, "resize_ms_per_image_old": rs_old,
                   "resize_ms_per_image_new": rs_new, "resize_speedup": rs_old / rs_new,
                   "min_psnr_old_vs_new_db": agree,
                   "max_abs_diff_uint8_levels": max_levels}
            results.append(res)
            rows.append({"folder": folder.name, "n": len(paths), "size": size,
                         "old ms/img": ms_old, "new ms/img": ms_new, "speed-up": ms_old / ms_new,
                         "resize only: old ms": rs_old, "new ms": rs_new,
                         "resize speed-up": rs_old / rs_new,
                         "min PSNR old vs new (dB)": agree, "max |diff| (levels)": max_levels})
    print_table(rows, title="image loading: torch bicubic on float (old) vs PIL on uint8 (new)")
    out = {"results": results, "machine": machine_info("cpu"), "load_avg": os.getloadavg()}
    if args.json is not None:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
