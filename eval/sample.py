"""Class-balanced sampling from a trained GPT to PNGs and an ADM-format ``.npz`` (for gFID).

    python eval/sample.py --gpt runs/gpt_tiny/model --tokenizer runs/titok_tiny/model \
        --num-samples 50000 --cfg-scale 2.0 --out samples/gpt_tiny
    python eval/gfid.py samples/gpt_tiny/samples.npz --reference ref.npz --out runs/gfid

Writes ``<out>/images/<index>_<class>.png`` and ``<out>/samples.npz`` with ``arr_0`` uint8
``[N, H, W, 3]`` (rounded, as the ADM evaluator reads it) and ``labels``. Labels cycle through the
classes, so every class appears equally often; the sampler is seeded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import visualtok
from visualtok.data.image_io import save_image, to_uint8
from visualtok.generate.pipeline import class_balanced_labels, generate_images


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpt", required=True, help="GPT checkpoint dir")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint dir or preset name")
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--num-tokens", type=int, default=None, help="generate a prefix of k tokens")
    p.add_argument("--sampler", choices=["ar", "maskgit"], default="ar")
    p.add_argument("--num-steps", type=int, default=8, help="MaskGIT steps")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument(
        "--cfg-schedule", default="constant", choices=["constant", "linear", "power-cosine"]
    )
    p.add_argument("--cfg-power", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-png", action="store_true", help="write only the .npz")
    args = p.parse_args(argv)

    gpt = visualtok.load(args.gpt).to(args.device).eval()
    tok = visualtok.load(args.tokenizer).to(args.device).eval()
    if gpt.input_type == "features":
        gpt.bind_quantizer(tok.quantizer)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_cls = gpt.config.num_classes
    labels = class_balanced_labels(args.num_samples, n_cls) if n_cls else None
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    sampling = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        cfg_scale=args.cfg_scale,
        cfg_schedule=args.cfg_schedule,
        cfg_power=args.cfg_power,
    )
    arrays = []
    for lo in range(0, args.num_samples, args.batch_size):
        hi = min(lo + args.batch_size, args.num_samples)
        lab = labels[lo:hi].to(args.device) if labels is not None else None
        imgs = generate_images(
            gpt,
            tok,
            lab,
            None if lab is not None else hi - lo,
            args.num_tokens,
            args.sampler,
            args.num_steps,
            gen,
            **sampling,
        )
        u8 = to_uint8(imgs).cpu()
        arrays.append(u8.permute(0, 2, 3, 1).numpy())
        if not args.no_png:
            for i, img in enumerate(u8):
                c = int(labels[lo + i]) if labels is not None else 0
                save_image(img, out / "images" / f"{lo + i:06d}_{c:04d}.png")
    arr = np.concatenate(arrays)
    lab_np = labels.numpy() if labels is not None else np.zeros(len(arr), dtype=np.int64)
    np.savez(out / "samples.npz", arr_0=arr, labels=lab_np)
    (out / "sampling.json").write_text(
        json.dumps({**vars(args), "count": len(arr)}, indent=2) + "\n"
    )
    print(f"wrote {len(arr)} samples to {out} (samples.npz: uint8 {arr.shape})")
    return out


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
