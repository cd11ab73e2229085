"""Video tokenizer evaluation: PSNR / SSIM per clip, tokens per clip, bits per second, frame grid.

Each clip is read as ``model.num_frames`` frames ``--stride`` apart from ``--start`` (short side
resized, centre-cropped to the model's frame size), encoded, decoded and compared frame by frame.
Bits per second = bits per clip x (source fps / stride) / frames per clip.

Command: ``python eval/video.py MODEL CLIP [CLIP ...] --out DIR [--random-init]``; writes
``results.json`` and ``frames.png`` (for each clip: original frames above reconstructed frames).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from visualtok.metrics.image import psnr, ssim  # noqa: E402
from visualtok.video.io import probe, read_video, save_frame_grid  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="video tokenizer: preset name or checkpoint directory")
    ap.add_argument("clips", nargs="+", type=Path)
    ap.add_argument("--random-init", action="store_true", help="preset with random weights (smoke)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import visualtok

    model = (visualtok.create_model(args.model) if args.random_init
             else visualtok.load(args.model)).eval()
    if getattr(model, "num_frames", None) is None:
        raise SystemExit(f"{args.model} is not a video tokenizer")
    side, t = model.image_size[0], model.num_frames
    rows, per_clip = [], []
    for path in args.clips:
        clip = read_video(path, t, "stride", stride=args.stride, start=args.start, size=side,
                          crop=side)[None]
        with torch.no_grad():
            codes = model.encode(clip)
            recon = model.decode(codes)
        fps = probe(path).fps / args.stride
        bits = model.bits_per_clip
        per_clip.append({
            "clip": path.name, "frames": t, "fps": fps,
            "psnr": float(psnr(recon[0], clip[0]).mean()),
            "ssim": float(ssim(recon[0], clip[0]).mean()),
            "tokens_per_clip": int(codes.shape[1]), "bits_per_clip": bits,
            "bits_per_second": bits * fps / t,
        })
        rows += [clip[0], recon[0]]
    args.out.mkdir(parents=True, exist_ok=True)
    save_frame_grid(args.out / "frames.png", torch.stack(rows))
    results = {"model": args.model, "clips": per_clip,
               "mean_psnr": sum(c["psnr"] for c in per_clip) / len(per_clip),
               "mean_ssim": sum(c["ssim"] for c in per_clip) / len(per_clip)}
    write_results(args.out, results)
    print("| clip | PSNR | SSIM | tokens / clip | bits / s |\n|---|---|---|---|---|")
    for c in per_clip:
        print(f"| {c['clip']} | {c['psnr']:.2f} | {c['ssim']:.3f} | {c['tokens_per_clip']} | "
              f"{c['bits_per_second']:.0f} |")
    return results


if __name__ == "__main__":
    main()
