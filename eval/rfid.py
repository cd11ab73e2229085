"""Reconstruction evaluation of an image tokenizer: rFID, pFID, PSNR, SSIM, code usage, bits.

    python eval/rfid.py titok_s128 ../shared/data/images/kodak --out runs/eval_titok_s128
    python eval/rfid.py titok_tiny images/ --random-init --features random-tiny --out /tmp/smoke

Images are centre-cropped and resized to the tokenizer's input size. The reference for rFID is the
same centre-cropped images (DESIGN §7) unless ``--reference stats.npz`` is given. Writes
``results.json`` and ``reconstructions.png`` (originals, reconstructions, perturbed decodes).
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

from visualtok.data.image_io import iter_image_batches, save_grid
from visualtok.metrics.fid import (
    build_feature_extractor,
    extract_features,
    feature_statistics,
    fid_from_features,
    load_reference,
)
from visualtok.metrics.image import code_statistics, psnr, ssim
from visualtok.metrics.pfid import DEFAULT_RATE, compute_pfid, default_strength, perturb_codes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = tokenizer_eval_parser(__doc__)
    ap.add_argument("--reference", type=Path, default=None,
                    help="reference statistics .npz (default: the evaluated images themselves)")
    ap.add_argument("--pfid-rate", type=float, default=DEFAULT_RATE, help="α: share of tokens")
    ap.add_argument("--pfid-strength", type=int, default=None,
                    help="δ: family-specific strength (default: visualtok.metrics.pfid)")
    ap.add_argument("--no-pfid", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid-images", type=int, default=8)
    return ap.parse_args(argv)


@torch.no_grad()
def main(argv: list[str] | None = None, extractor: torch.nn.Module | None = None) -> dict:
    args = parse_args(argv)
    tok = load_tokenizer(args)
    ext = extractor or build_feature_extractor(args.features, args.fid_weights, args.device)
    paths, subset = select_images(args)
    ref = None
    if args.reference is not None:  # read and check it before the long part
        ref, _ = load_reference(args.reference, ext, batch_size=args.batch_size)
    if len(paths) < 2:
        raise SystemExit(f"need at least 2 images in {args.images}; found {len(paths)}")
    strength = args.pfid_strength or default_strength(tok.code_layout)

    t0 = time.perf_counter()
    feats = {"orig": [], "recon": []}
    psnrs, ssims, all_codes = [], [], []
    grid = None
    for batch in iter_image_batches(paths, tok.image_size, args.batch_size):
        x = batch.to(args.device)
        codes = tok.encode(x)
        recon = tok.decode(codes)
        feats["orig"].append(extract_features(x, ext, device=args.device))
        feats["recon"].append(extract_features(recon, ext, device=args.device))
        psnrs.append(psnr(x, recon).cpu())
        ssims.append(ssim(x, recon).cpu())
        all_codes.append(codes.cpu())
        if grid is None:
            k = args.grid_images
            grid = [x[:k].cpu(), recon[:k].cpu()]
            if not args.no_pfid:  # the first batch's perturbed decode, as compute_pfid draws it
                gen = torch.Generator(device=args.device).manual_seed(args.seed)
                new, _ = perturb_codes(tok, codes, args.pfid_rate, strength, gen)
                grid.append(tok.decode(new)[:k].cpu())
        if not args.no_progress:
            print(f"  {sum(len(p) for p in psnrs)}/{len(paths)} images", file=sys.stderr)
    n = len(paths)
    name = getattr(ext, "name", "")
    recon_feats = np.concatenate(feats["recon"])
    if args.reference is not None:
        ref_desc = str(args.reference)
        ref_target = ref
    else:
        ref_target = np.concatenate(feats["orig"])  # FID through the features: same value, fast
        ref = feature_statistics(ref_target, name)
        ref_desc = f"the {n} evaluated images, centre-cropped to {tok.image_size}"
    rfid = fid_from_features(recon_feats, ref_target)
    results = {
        "model": args.model,
        "random_init": args.random_init,
        "images": str(args.images),
        "subset": subset,
        "num_samples": n,
        "image_size": list(tok.image_size),
        "features": name,
        "reference": ref_desc,
        "reference_num_samples": ref.num_samples,
        "rfid": rfid,
        "rfid_label": f"rFID[{n}]",
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
        "codes": code_statistics(tok.quantizer, torch.cat(all_codes)),
        "bits_per_image": float(tok.bits_per_image),
    }
    if not args.no_pfid:
        result = compute_pfid(tok, iter_image_batches(paths, tok.image_size, args.batch_size),
                              ref_target, ext, rate=args.pfid_rate, strength=strength,
                              batch_size=args.batch_size, device=args.device, seed=args.seed,
                              progress=not args.no_progress)
        results["pfid"] = {**result.to_dict(), "seed": args.seed}
    results["seconds"] = time.perf_counter() - t0
    results["environment"] = environment(args.device)
    labels = ["original", "recon"] + ([] if args.no_pfid else ["perturbed"])
    save_grid(grid, args.out / "reconstructions.png", labels=labels)
    write_results(args.out, results)
    line = f"{results['rfid_label']} = {rfid:.4g}"
    if not args.no_pfid:
        line += f"   {results['pfid']['label']} = {results['pfid']['pfid']:.4g}"
    c = results["codes"]
    print(f"{line}   PSNR {results['psnr']:.3f} dB   SSIM {results['ssim']:.4f}   "
          f"{results['bits_per_image']:.0f} bits/image   (n = {n}, features {name}) -> {args.out}")
    print(f"codes: {c['used']} of {c['codebook_size']} used over {c['num_tokens']} tokens "
          f"(usage {c['usage']:.3f}; {c['usage_of_possible']:.3f} of the {c['max_possible_used']} "
          f"possible), perplexity {c['perplexity']:.4g} "
          f"({c['perplexity_of_possible']:.3f} of the maximum)")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "rfid.py"))
