"""Generation evaluation: FID / KID / precision-recall of samples against reference statistics.

    python eval/gfid.py samples/ --reference VIRTUAL_imagenet256_labeled.npz --out runs/gfid
    python eval/gfid.py samples.npz --reference ref.npz --out runs/gfid
    python eval/gfid.py val/ --size 256 --save-stats ref.npz --out runs/ref  # make a reference

Samples are an image folder or an ``.npz`` with ``arr_0`` uint8 ``[N, H, W, 3]`` (the ADM sample
format). The reference is our ``.npz`` (``mu``/``sigma``) or an ADM reference batch; KID and
precision/recall need reference *features*, so they are computed only when the reference file holds
images (``arr_0``). Writes ``results.json`` with every sample count.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, environment, write_results

from visualtok.data.image_io import iter_image_batches, list_images, load_image
from visualtok.metrics.fid import (
    build_feature_extractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    load_reference,
    open_npz,
    precision_recall,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", type=Path, help="image folder or .npz (arr_0: uint8 [N, H, W, 3])")
    ap.add_argument("--reference", type=Path, default=None, help="reference .npz")
    ap.add_argument("--save-stats", type=Path, default=None,
                    help="also save the samples' statistics (mu, sigma) to this .npz")
    ap.add_argument("--size", type=int, default=None,
                    help="centre-crop and resize folder images to this size (default: as stored)")
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--kid-subset-size", type=int, default=1000)
    ap.add_argument("--pr-k", type=int, default=3)
    add_common_args(ap)
    return ap.parse_args(argv)


def sample_batches(args: argparse.Namespace) -> tuple[Iterator[torch.Tensor], int]:
    """Batches of samples (uint8 or float [0, 1]) and their count."""
    src = args.samples
    if src.suffix == ".npz":
        with open_npz(src) as z:
            if "arr_0" not in z:
                raise SystemExit(f"{src}: expected 'arr_0' uint8 [N, H, W, 3]; keys {z.files}")
            arr = z["arr_0"][: args.max_images]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise SystemExit(
                f"{src}: arr_0 must be uint8 [N, H, W, 3]; got {arr.dtype} {arr.shape}"
            )
        t = torch.from_numpy(arr).permute(0, 3, 1, 2)
        return (t[i : i + args.batch_size] for i in range(0, len(t), args.batch_size)), len(t)
    paths = list_images(src)[: args.max_images]
    if args.size is not None:
        return iter_image_batches(paths, args.size, args.batch_size), len(paths)

    def gen() -> Iterator[torch.Tensor]:
        for i in range(0, len(paths), args.batch_size):
            imgs = [load_image(p) for p in paths[i : i + args.batch_size]]
            shapes = {tuple(im.shape) for im in imgs}
            if len(shapes) > 1:
                raise SystemExit(f"images in {src} differ in size ({sorted(shapes)[:3]}...): "
                                 "pass --size to centre-crop them")
            yield torch.stack(imgs)

    return gen(), len(paths)


@torch.no_grad()
def main(argv: list[str] | None = None, extractor: torch.nn.Module | None = None) -> dict:
    args = parse_args(argv)
    if args.reference is None and args.save_stats is None:
        raise SystemExit("give --reference (to score samples) and/or --save-stats (to save them)")
    ext = extractor or build_feature_extractor(args.features, args.fid_weights, args.device)
    name = getattr(ext, "name", "")
    t0 = time.perf_counter()
    batches, n = sample_batches(args)
    if n < 2:
        raise SystemExit(f"need at least 2 samples in {args.samples}; found {n}")
    feats = extract_features(batches, ext, batch_size=args.batch_size, device=args.device,
                             progress=not args.no_progress, total=n)
    stats = feature_statistics(feats, name)
    results: dict = {"samples": str(args.samples), "num_samples": int(feats.shape[0]),
                     "features": name}
    if args.save_stats is not None:
        results["saved_stats"] = str(stats.save(args.save_stats))
    if args.reference is not None:
        ref, ref_feats = load_reference(args.reference, ext, batch_size=args.batch_size)
        results.update(reference=str(args.reference), reference_num_samples=ref.num_samples)
        results["fid"] = frechet_distance(stats, ref)
        results["fid_label"] = f"FID[{results['num_samples']}]"
        if ref_feats is not None:
            kid, kid_std = kernel_inception_distance(ref_feats, feats, args.kid_subsets,
                                                     args.kid_subset_size)
            prec, rec = precision_recall(ref_feats, feats, k=args.pr_k)
            results.update(kid=kid, kid_std=kid_std, precision=prec, recall=rec,
                           kid_subset_size=min(args.kid_subset_size, len(feats), len(ref_feats)))
        else:
            results["kid"] = results["precision"] = results["recall"] = None
            results["note"] = ("KID and precision/recall need reference features: the reference "
                               "file has statistics only (no arr_0 images)")
    results["seconds"] = time.perf_counter() - t0
    results["environment"] = environment(args.device)
    write_results(args.out, results)
    if "fid" in results:
        extra = "" if results.get("kid") is None else (
            f"   KID {results['kid']:.4g} ± {results['kid_std']:.2g}   "
            f"precision {results['precision']:.3f}   recall {results['recall']:.3f}")
        print(f"{results['fid_label']} = {results['fid']:.4g}{extra}   (features {name}) "
              f"-> {args.out}")
    return results


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
