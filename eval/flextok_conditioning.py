"""Does a FlexTok decoder use its registers? Flow loss by prefix length, and code diversity.

    python eval/flextok_conditioning.py runs/flextok_tiny/model ../shared/data/images/kodak \
        --out runs/flextok_conditioning

On held-out images (eval mode: VAE posterior means), with one fixed draw of noise per image and
timesteps t = 0.1 .. 0.9, it measures the rectified-flow loss ``|v - (noise - x0)|^2`` of the
decoder given the null condition and given the first k registers, k = 1, 2, 4, ..., N. A decoder
that uses its registers has a loss that falls with k, below the null condition; one that ignores
them has the same loss for every k. The encoder side: per register position, how many distinct
FSQ codes the images get, and the spread of the pre-quantizer values (a collapsed encoder gives
every image the same code). Writes ``results.json`` and prints a table.

``--overfit-steps S`` first trains a fresh encoder and decoder (same config, the checkpoint's
frozen VAE) on just these images for S steps (AdamW, lr 1e-3, batch = all of them) and then
measures it on the same images: whether the architecture can use its registers at all, apart
from how long a real run must train.
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


@torch.no_grad()
def flow_losses(model, images: torch.Tensor, ts: list[float], ks: list[int | None],
                seed: int = 0) -> dict:
    """Loss ``[len(ks), len(ts)]`` (mean over images); ``None`` in ``ks`` is the null condition."""
    lat = model.vae_encode(images)
    z_q = model.quantizer(model.encode_latents(images)).z_q
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(lat.shape, generator=g).to(lat)
    target = (noise - lat).float()
    B, n = lat.shape[0], model.max_tokens
    table = torch.zeros(len(ks), len(ts))
    for j, t in enumerate(ts):
        x_t = t * noise + (1 - t) * lat
        tt = torch.full((B,), t)
        for i, k in enumerate(ks):
            keep = torch.full((B,), n if k is None else k, dtype=torch.long)
            uncond = torch.full((B,), k is None)
            v = model.decoder(x_t, tt, z_q, keep, uncond).float()
            table[i, j] = (v - target).pow(2).mean()
    return {"loss": table, "latent_var": float(lat.float().var())}


@torch.no_grad()
def code_diversity(model, images: torch.Tensor) -> dict:
    pre = model.encode_latents(images)  # [B, N, 6] before FSQ
    codes = model.quantizer.encode(pre)
    ids = model.quantizer.to_ids(codes)  # [B, N]
    distinct = [int(ids[:, i].unique().numel()) for i in range(ids.shape[1])]
    return {"distinct_codes_per_register": distinct,
            "pre_quantizer_std_over_images": pre.float().std(0).mean(-1).tolist()}


def overfit(model, images: torch.Tensor, steps: int, seed: int = 0):
    """A fresh encoder + decoder (the same config and frozen VAE) fitted to ``images`` only."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    fresh.vae.load_state_dict(model.vae.state_dict())
    fresh.scaling_factor = model.scaling_factor
    fresh.train()
    with torch.no_grad():
        lat = fresh.vae_encode(images)  # posterior means, cached for every step
    opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3,
                            betas=(0.9, 0.99))
    for _ in tqdm(range(steps), desc="overfit"):
        loss = fresh.flow_loss(images, latents=lat)["flow"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return fresh.eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("images", type=Path)
    ap.add_argument("--max-images", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overfit-steps", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    model = visualtok.load(args.model).eval()
    if not hasattr(model, "decoder") or not hasattr(model, "vae_encode"):
        raise SystemExit(f"{args.model} is not a FlexTok checkpoint")
    paths = list_images(args.images)[: args.max_images]
    images = torch.cat(list(iter_image_batches(paths, model.image_size[0], 32)))
    if args.overfit_steps > 0:
        model = overfit(model, images, args.overfit_steps, args.seed)
    n = model.max_tokens
    ks: list[int | None] = [None] + [2**i for i in range(n.bit_length()) if 2**i < n] + [n]
    ts = [0.1, 0.3, 0.5, 0.7, 0.9]
    fl = flow_losses(model, images, ts, ks, args.seed)
    div = code_diversity(model, images)
    names = ["null"] + [str(k) for k in ks[1:]]
    print("| condition | " + " | ".join(f"t={t}" for t in ts) + " | mean | vs null |")
    print("|---|" + "---|" * (len(ts) + 2))
    null = float(fl["loss"][0].mean())
    rows = []
    for name, row in zip(names, fl["loss"]):
        m = float(row.mean())
        rows.append({"condition": name, "loss_by_t": row.tolist(), "mean": m,
                     "relative_to_null": m / null})
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.tolist())
              + f" | {m:.4f} | {m / null:.3f} |")
    d = div["distinct_codes_per_register"]
    print(f"distinct FSQ codes per register over {images.shape[0]} images: min {min(d)}, "
          f"median {sorted(d)[len(d) // 2]}, max {max(d)}")
    payload = {"model": args.model, "images": str(args.images), "num_images": images.shape[0],
               "overfit_steps": args.overfit_steps,
               "timesteps": ts, "rows": rows, "latent_var": fl["latent_var"], **div}
    if args.out is not None:
        write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
