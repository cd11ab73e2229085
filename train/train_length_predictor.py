"""Train the single-pass adaptive-length predictor of a 1D tokenizer from its own RD curves.

    python train/train_length_predictor.py titok_photo128_nested runs/photos128 \
        --out runs/titok_nested_length --images 64 --length-step 8
    python train/train_length_predictor.py runs/flextok_tiny/model runs/patches64 \
        --out runs/flextok_tiny_length --images 512 --steps 10 --guidance 1.0

For each training image (Kodak is never used: ``--exclude kodak``) the tokenizer encodes once and
decodes the prefixes k = 1, s, 2s, ..., N (``--length-step s``; FlexTok with a fixed seed and step
count), giving the PSNR curve q(k). A ``LengthPredictor`` learns to predict the curve from the
quantized tokens (MSE in dB) on 75% of the images; its ``margin`` is the ``--quantile`` quantile
of (predicted - true) on the other 25%, so the chosen k meets the target about that often on
unseen images. Writes a visualtok checkpoint
(``visualtok.load(out)``) and ``curves.safetensors`` (the RD curves, reusable).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import visualtok
from visualtok.data.image_io import iter_image_batches, list_images
from visualtok.metrics.adaptive import LengthPredictor, LengthPredictorConfig, quality_curves

log = logging.getLogger("train_length_predictor")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("tokenizer", help="visualtok checkpoint dir or preset name")
    ap.add_argument("images", type=Path, help="folder of training images")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images-max", "--images", dest="max_images", type=int, default=512)
    ap.add_argument("--exclude", nargs="*", default=["kodak"], help="sub-folders to skip")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="decoder sampling steps")
    ap.add_argument("--guidance", type=float, default=None, help="decoder guidance scale")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--quantile", type=float, default=0.95)
    ap.add_argument("--length-step", type=int, default=1,
                    help="predict q at k = step, 2*step, ..., N (and k = 1); 1 = every k")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def decode_kwargs(args: argparse.Namespace) -> dict:
    kw = {}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.guidance is not None:
        kw["guidance_scale"] = args.guidance
    return kw


@torch.no_grad()
def lengths_grid(n: int, step: int) -> list[int]:
    return sorted({1, n} | set(range(step, n + 1, step)))


def collect_curves(tok, paths: list[Path], batch_size: int, kw: dict,
                   ks: list[int]) -> dict[str, torch.Tensor]:
    z_all, q_all = [], []
    size = tok.image_size
    for batch in tqdm(iter_image_batches(paths, size[0], batch_size), desc="rd curves",
                      total=(len(paths) + batch_size - 1) // batch_size):
        codes, q = quality_curves(tok, batch, ks=ks, decode_kwargs=kw)
        z_all.append(tok.quantizer.decode(codes).float())
        q_all.append(q)
    return {"z_q": torch.cat(z_all), "psnr": torch.cat(q_all)}


def fit(data: dict[str, torch.Tensor], cfg: LengthPredictorConfig, epochs: int, lr: float,
        quantile: float, seed: int, calib_fraction: float = 0.25) -> LengthPredictor:
    """Fit on part of the images; set ``margin`` from the residuals on the held-out rest."""
    torch.manual_seed(seed)
    model = LengthPredictor(cfg)
    n = data["z_q"].shape[0]
    perm = torch.randperm(n)
    n_cal = max(1, int(round(n * calib_fraction)))
    cal, tr = perm[:n_cal], perm[n_cal:]
    model.offset.fill_(float(data["psnr"][tr, 0].mean()))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    z, q = data["z_q"][tr].detach().clone(), data["psnr"][tr].detach().clone()
    for _ in tqdm(range(epochs), desc="fit"):
        perm = torch.randperm(z.shape[0])
        for i in range(0, z.shape[0], 64):
            idx = perm[i : i + 64]
            loss = (model(z[idx]) - q[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        fit_err = (model(z) - q).flatten()
        err = (model(data["z_q"][cal]) - data["psnr"][cal]).flatten()
    model.config.margin = float(torch.quantile(err, quantile))
    log.info("fit rmse %.3f dB; held-out rmse %.3f dB; margin (q%.2f) %.3f dB",
             float(fit_err.pow(2).mean().sqrt()), float(err.pow(2).mean().sqrt()), quantile,
             model.config.margin)
    return model.eval()


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    tok = visualtok.load(args.tokenizer).eval()
    kw = decode_kwargs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "curves.safetensors"
    ks = lengths_grid(tok.max_tokens, args.length_step)
    if cache.is_file():
        data = load_file(str(cache))
    else:
        paths = [p for p in list_images(args.images)
                 if not set(args.exclude) & set(p.relative_to(args.images).parts[:-1])]
        g = torch.Generator().manual_seed(args.seed)
        pick = torch.randperm(len(paths), generator=g)[: args.max_images].tolist()
        data = collect_curves(tok, [paths[i] for i in sorted(pick)], args.batch_size, kw, ks)
        save_file(data, str(cache))
    cfg = LengthPredictorConfig(num_tokens=tok.max_tokens, token_dim=data["z_q"].shape[-1],
                                lengths=tuple(ks), tokenizer=str(args.tokenizer),
                                decode_kwargs=kw)
    model = fit(data, cfg, args.epochs, args.lr, args.quantile, args.seed)
    out = model.save_pretrained(args.out)
    print(f"wrote {out} (margin {model.config.margin:.3f} dB over {data['psnr'].shape[0]} images)")
    return out


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
