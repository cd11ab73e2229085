"""Generation evaluation: FID / KID / precision-recall of samples against reference statistics.

    python eval/gfid.py make-ref ../shared/data/images/kodak --size 128 --out runs/ref/kodak128.npz
    python eval/gfid.py samples/ --reference runs/ref/kodak128.npz --bootstrap 100 --out runs/gfid
    python eval/gfid.py samples.npz --reference VIRTUAL_imagenet256_labeled.npz --out runs/gfid

``make-ref IMAGES --out REF.npz`` builds a reference: the Inception statistics (``mu``, ``sigma``)
of an image folder (or ADM ``.npz``), plus the features themselves so that KID and precision/recall
work against it (``--stats-only`` leaves them out). Scoring takes samples as an image folder or an
``.npz`` with ``arr_0`` uint8 ``[N, H, W, 3]`` (the ADM sample format) and a reference: ours, or an
ADM reference batch (KID and precision/recall need its images, ``arr_0``, or our ``features``).
``--bootstrap B`` adds a resampling confidence interval for the FID. Writes ``results.json`` with
every sample count. The protocol that makes a gFID meaningful at our scale is in eval/README.md.
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
from _common import (
    add_common_args,
    add_feature_args,
    add_subset_args,
    environment,
    run_cli,
    write_results,
)

from visualtok.data.image_io import iter_image_batches, list_images, load_image, select_subset
from visualtok.metrics.fid import (
    build_feature_extractor,
    extract_features,
    feature_statistics,
    fid_bootstrap,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
    kid_subset_plan,
    load_reference,
    open_npz,
    precision_recall,
    save_reference,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="make a reference: eval/gfid.py make-ref IMAGES --out REF.npz")
    ap.add_argument("samples", type=Path, help="image folder or .npz (arr_0: uint8 [N, H, W, 3])")
    ap.add_argument("--reference", type=Path, default=None,
                    help="reference .npz (from `make-ref`, or an ADM reference batch)")
    ap.add_argument("--save-stats", type=Path, default=None,
                    help="also save the samples' statistics and features to this .npz")
    ap.add_argument("--size", type=int, default=None,
                    help="centre-crop and resize folder images to this size (default: as stored)")
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--kid-subset-size", type=int, default=1000)
    ap.add_argument("--pr-k", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=0,
                    help="FID confidence interval from this many bootstrap resamples (0: none)")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0, help="seed of KID subsets and the bootstrap")
    add_common_args(ap)
    return ap.parse_args(argv)


def parse_make_ref_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="gfid.py make-ref",
        description="Build reference statistics (mu, sigma and features) of real images.")
    ap.add_argument("images", type=Path, help="image folder (recursive) or .npz (arr_0 uint8)")
    ap.add_argument("--out", type=Path, required=True, help="reference file to write (.npz)")
    ap.add_argument("--size", type=int, default=None,
                    help="centre-crop and resize folder images to this size (default: as stored)")
    ap.add_argument("--stats-only", action="store_true",
                    help="store mu/sigma only (no features: no KID or precision/recall later)")
    add_feature_args(ap)
    add_subset_args(ap)
    return ap.parse_args(argv)


def sample_batches(
    src: Path, args: argparse.Namespace
) -> tuple[Iterator[torch.Tensor], int, str, list[int]]:
    """Batches of images (uint8 or float [0, 1]) from a folder or ADM ``.npz``.

    Returns the batches, their count, a description of the ``--max-images`` subset and the image
    size ``[H, W]``.
    """
    if src.suffix == ".npz":
        with open_npz(src, "samples file", hint="") as z:
            if "arr_0" not in z:
                raise ValueError(f"{src}: expected 'arr_0' uint8 [N, H, W, 3]; keys {z.files}")
            arr = z["arr_0"]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(
                f"{src}: arr_0 must be uint8 [N, H, W, 3]; got {arr.dtype} {arr.shape}")
        idx, desc = select_subset(range(len(arr)), args.max_images, args.subset, args.subset_seed)
        t = torch.from_numpy(arr[idx]).permute(0, 3, 1, 2)
        batches = (t[i : i + args.batch_size] for i in range(0, len(t), args.batch_size))
        return batches, len(t), f"{desc} images of {src}", list(arr.shape[1:3])
    paths, desc = select_subset(list_images(src), args.max_images, args.subset, args.subset_seed)
    desc = f"{desc} files under {src}"
    if not paths:
        return iter(()), 0, desc, []
    if args.size is not None:
        return iter_image_batches(paths, args.size, args.batch_size), len(paths), desc, [
            args.size, args.size]

    def gen() -> Iterator[torch.Tensor]:
        for i in range(0, len(paths), args.batch_size):
            imgs = [load_image(p, convert=True) for p in paths[i : i + args.batch_size]]
            shapes = {tuple(im.shape) for im in imgs}
            if len(shapes) > 1:
                raise ValueError(f"images in {src} differ in size ({sorted(shapes)[:3]}...): "
                                 "pass --size to centre-crop them")
            yield torch.stack(imgs)

    return gen(), len(paths), desc, list(load_image(paths[0], convert=True).shape[-2:])


def _features(src: Path, args: argparse.Namespace, ext) -> tuple[np.ndarray, str, list[int]]:
    batches, n, desc, size = sample_batches(src, args)
    print(f"{src}: {desc}", file=sys.stderr)
    if n < 2:
        raise ValueError(f"need at least 2 images in {src}; found {n}")
    feats = extract_features(batches, ext, batch_size=args.batch_size, device=args.device,
                             progress=not args.no_progress, total=n)
    return feats, desc, size


@torch.no_grad()
def make_ref(argv: list[str], extractor: torch.nn.Module | None = None) -> dict:
    args = parse_make_ref_args(argv)
    if args.out.suffix != ".npz":
        raise ValueError(f"--out must be a .npz file; got {args.out}")
    ext = extractor or build_feature_extractor(args.features, args.fid_weights, args.device)
    name = getattr(ext, "name", "")
    t0 = time.perf_counter()
    feats, desc, size = _features(args.images, args, ext)
    path = save_reference(args.out, feats, name, keep_features=not args.stats_only,
                          source=str(args.images), subset=desc, image_size=np.asarray(size))
    res = {"reference": str(path), "source": str(args.images), "subset": desc,
           "num_samples": int(feats.shape[0]), "image_size": size, "features": name,
           "has_features": not args.stats_only, "seconds": time.perf_counter() - t0}
    print(f"wrote {path}: statistics of {feats.shape[0]} images ({size[0]}x{size[1]}, {name})"
          + ("" if args.stats_only else " and their features (KID, precision/recall)"))
    return res


def _reference_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].tolist() for k in ("source", "subset", "image_size") if k in z.files}


@torch.no_grad()
def main(argv: list[str] | None = None, extractor: torch.nn.Module | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "make-ref":
        return make_ref(argv[1:], extractor)
    args = parse_args(argv)
    if args.reference is None and args.save_stats is None:
        raise SystemExit("give --reference (to score samples) and/or --save-stats (to save them); "
                         "to build a reference: eval/gfid.py make-ref IMAGES --out REF.npz")
    ext = extractor or build_feature_extractor(args.features, args.fid_weights, args.device)
    name = getattr(ext, "name", "")
    ref = ref_feats = None
    if args.reference is not None:  # read (and check) the reference before the long part
        ref, ref_feats = load_reference(args.reference, ext, batch_size=args.batch_size)
    t0 = time.perf_counter()
    feats, desc, size = _features(args.samples, args, ext)
    stats = feature_statistics(feats, name)
    n = int(feats.shape[0])
    results: dict = {"samples": str(args.samples), "subset": desc, "num_samples": n,
                     "image_size": size, "features": name}
    if args.save_stats is not None:
        results["saved_stats"] = str(save_reference(args.save_stats, feats, name,
                                                    source=str(args.samples), subset=desc))
    if ref is not None:
        meta = _reference_meta(args.reference)
        results.update(reference=str(args.reference), reference_num_samples=ref.num_samples,
                       reference_meta=meta)
        if "image_size" in meta and list(meta["image_size"]) != size:
            results["warning"] = (f"samples are {size} but the reference images were "
                                  f"{meta['image_size']}: FID compares different resolutions")
        same = ref_feats is not None and np.allclose(ref_feats.mean(0), ref.mu, atol=1e-6)
        # the same FID; through the features when the reference statistics are theirs (fast)
        results["fid"] = fid_from_features(feats, ref_feats) if same else frechet_distance(stats,
                                                                                          ref)
        results["fid_label"] = f"FID[{n}]"
        if args.bootstrap:
            results["fid_ci"] = fid_bootstrap(feats, ref_feats if same else ref, args.bootstrap,
                                              args.confidence, args.seed,
                                              progress=not args.no_progress)
        if ref_feats is not None:
            subsets, m = kid_subset_plan(len(ref_feats), n, args.kid_subsets, args.kid_subset_size)
            kid, kid_std = kernel_inception_distance(ref_feats, feats, args.kid_subsets,
                                                     args.kid_subset_size, seed=args.seed)
            prec, rec = precision_recall(ref_feats, feats, k=args.pr_k)
            results.update(kid=kid, kid_std=kid_std, kid_num_subsets=subsets,
                           kid_subset_size=m, precision=prec, recall=rec, pr_k=args.pr_k)
        else:
            results["kid"] = results["precision"] = results["recall"] = None
            results["note"] = ("KID and precision/recall need reference features: the reference "
                               "file has statistics only (no arr_0 images or features)")
    results["seconds"] = time.perf_counter() - t0
    results["environment"] = environment(args.device)
    write_results(args.out, results)
    if "fid" in results:
        line = f"{results['fid_label']} = {results['fid']:.4g}"
        if "fid_ci" in results:
            ci = results["fid_ci"]
            line += (f" ({ci['confidence']:.0%} CI [{ci['low']:.4g}, {ci['high']:.4g}] from "
                     f"{ci['num_resamples']} bootstrap resamples; their mean "
                     f"{ci['resampled_mean']:.4g}: small-N bias)")
        if results.get("kid") is not None:
            if results["kid_std"] is None:
                line += (f"   KID {results['kid']:.4g} (one estimate on all {n} vs "
                         f"{len(ref_feats)} samples: no spread)")
            else:
                line += (f"   KID {results['kid']:.4g} ± {results['kid_std']:.2g} "
                         f"({results['kid_num_subsets']} subsets of {results['kid_subset_size']})")
            line += f"   precision {results['precision']:.3f}   recall {results['recall']:.3f}"
        print(f"{line}   (features {name}) -> {args.out}")
        if "warning" in results:
            print(f"warning: {results['warning']}", file=sys.stderr)
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "gfid.py"))
