"""Train the single-pass adaptive-length predictor of a 1D tokenizer from its own RD curves.

    python train/train_length_predictor.py titok_photo128_nested runs/photos128 \
        --out runs/titok_nested_length --images 540
    python train/train_length_predictor.py runs/flextok_tiny/model runs/patches64 \
        --out runs/flextok_tiny_length --images 512 --steps 10 --guidance 1.0

For each training image (Kodak is never used: ``--exclude kodak``) the tokenizer encodes once and
decodes the prefixes k of ``--lengths`` (default: 1, 2, 3, 4, 6, 8, 12, ... : powers of two and
1.5x them, up to N; FlexTok with a fixed seed and step count), giving the PSNR curve q(k).
``curves.safetensors`` in ``--out`` keeps the curves, tokens and images, and is reused.

A ``LengthPredictor`` then learns the curve from the pooled quantized tokens plus cheap image
statistics (``--inputs``): by ridge regression (``--hidden 0``, the ridge strength chosen by
cross-validation, folds split by photo) or an MLP. The margin that turns a predicted curve into a
safe choice is calibrated on photos the predictor never saw (split conformal): ``--calibration``
(default 0.25) of the photos, with every crop of a photo (``train/make_patches.py`` names) on the
same side, are held out; with ``--targets`` one margin (dB) is the smallest at which the decisions
on the held-out images meet each target on ``--coverage`` of those whose curve reaches it (with the
finite-sample correction); without targets, per-length ``--quantile`` quantiles of the held-out
error. ``--calibration 0`` falls back to per-length quantiles of the out-of-fold error on every
image. The decisions are also simulated on the held-out images (coverage and tokens against the
true smallest k). Writes a visualtok checkpoint (``visualtok.load(out)``) and ``fit.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
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
    ap.add_argument("--lengths", type=str, default=None,
                    help="comma-separated prefix lengths (must end at N); default: a log grid")
    ap.add_argument("--inputs", choices=["tokens", "tokens+image"], default="tokens+image")
    ap.add_argument("--hidden", type=int, default=0, help="0: ridge regression; > 0: MLP width")
    ap.add_argument("--epochs", type=int, default=300, help="MLP only")
    ap.add_argument("--lr", type=float, default=2e-3, help="MLP only")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--quantile", type=float, default=0.9,
                    help="without --calibration: per-length quantile of the out-of-fold error")
    ap.add_argument("--calibration", type=float, default=0.25,
                    help="share of the photos (all crops of a photo together) held out to "
                         "calibrate the margin; 0: per-length out-of-fold quantiles instead")
    ap.add_argument("--rule", choices=["margin", "risk"], default="margin",
                    help="decision rule (LengthPredictorConfig.rule); 'risk' needs --targets and "
                         "--calibration > 0")
    ap.add_argument("--coverage", type=float, default=0.9,
                    help="with --calibration and --targets: share of the held-out images whose "
                         "decision must meet the target")
    ap.add_argument("--targets", type=float, nargs="*", default=[],
                    help="simulate the decisions at these PSNR targets (out-of-fold)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not 0 < args.quantile < 1:
        ap.error(f"--quantile must be in (0, 1); got {args.quantile}")
    if not 0 <= args.calibration < 1:
        ap.error(f"--calibration must be in [0, 1); got {args.calibration}")
    if args.rule == "risk" and not (args.targets and args.calibration > 0):
        ap.error("--rule risk is calibrated on held-out photos: pass --targets and "
                 "--calibration > 0")
    if not 0 < args.coverage < 1:
        ap.error(f"--coverage must be in (0, 1); got {args.coverage}")
    if args.folds < 2:
        ap.error(f"--folds must be >= 2; got {args.folds}")
    return args


def decode_kwargs(args: argparse.Namespace) -> dict:
    kw = {}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.guidance is not None:
        kw["guidance_scale"] = args.guidance
    return kw


def default_lengths(n: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ...: powers of two and 1.5x them, below N, then N."""
    ks = {1}
    p = 2
    while p < n:
        ks |= {p, p * 3 // 2}
        p *= 2
    return sorted(k for k in ks if k < n) + [n]


def parse_lengths(text: str | None, n: int) -> list[int]:
    if text is None:
        return default_lengths(n)
    try:
        ks = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--lengths must be comma-separated integers; got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] != n:
        raise ValueError(f"--lengths must lie in [1, {n}] and end at N = {n}; got {text!r}")
    return ks


_CROP_SUFFIX = re.compile(r"__s[0-9.]+_\d+_\d+$")


def photo_groups(paths: list[Path]) -> torch.Tensor:
    """One id per source photo: a crop of ``train/make_patches.py`` (``NAME__s0.25_Y_X``) shares
    the id of the photo ``NAME``, so a split never puts crops of one photo on both sides."""
    names = [_CROP_SUFFIX.sub("", p.stem) for p in paths]
    ids = {n: i for i, n in enumerate(sorted(set(names)))}
    return torch.tensor([ids[n] for n in names], dtype=torch.long)


def collect_curves(tok, paths: list[Path], batch_size: int, kw: dict,
                   ks: list[int]) -> dict[str, torch.Tensor]:
    """Per image: quantized tokens, PSNR at each k of ``ks``, the image itself (uint8) and its
    photo id, so other predictor inputs can be fitted later without decoding again."""
    z_all, q_all, im_all = [], [], []
    size = tok.image_size
    for batch in tqdm(iter_image_batches(paths, size[0], batch_size), desc="rd curves",
                      total=(len(paths) + batch_size - 1) // batch_size):
        codes, q = quality_curves(tok, batch, ks=ks, decode_kwargs=kw)
        z_all.append(tok.quantizer.decode(codes).float())
        q_all.append(q)
        im_all.append((batch * 255).round().to(torch.uint8))
    return {"z_q": torch.cat(z_all), "psnr": torch.cat(q_all), "images": torch.cat(im_all),
            "lengths": torch.tensor(ks), "group": photo_groups(paths)}


def _standardise(model: LengthPredictor, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    model.feature_mean.copy_(x.mean(0))
    model.feature_std.copy_(x.std(0, correction=0).clamp_min(1e-6))
    model.offset.copy_(q.mean(0))
    return (x - model.feature_mean) / model.feature_std


def _fit_one(cfg: LengthPredictorConfig, x: torch.Tensor, q: torch.Tensor, ridge: float,
             epochs: int, lr: float, seed: int) -> LengthPredictor:
    """A predictor fitted on raw features ``x [n, F]`` and curves ``q [n, K]``."""
    torch.manual_seed(seed)
    model = LengthPredictor(cfg)
    with torch.no_grad():
        xs = _standardise(model, x, q)
        y = q - model.offset
    if cfg.hidden == 0:  # closed-form ridge on standardised inputs
        a = xs.double()
        w = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype),
                               a.T @ y.double())
        with torch.no_grad():
            model.net.weight.copy_(w.T.float())
            model.net.bias.zero_()
        return model.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=ridge * 1e-3)
    for _ in range(epochs):
        perm = torch.randperm(xs.shape[0])
        for i in range(0, xs.shape[0], 64):
            idx = perm[i : i + 64]
            loss = (model.net(xs[idx]) - y[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _predict(model: LengthPredictor, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        xs = (x - model.feature_mean) / model.feature_std
        return (model.net(xs) + model.offset).cummax(dim=1).values


def out_of_fold(cfg: LengthPredictorConfig, x: torch.Tensor, q: torch.Tensor, ridge: float,
                folds: int, epochs: int, lr: float, seed: int,
                groups: torch.Tensor | None = None) -> torch.Tensor:
    """Predictions ``[n, K]`` of each image by a predictor fitted without its fold (the folds split
    ``groups``, e.g. photos, so crops of one photo are never on both sides)."""
    n = x.shape[0]
    groups = torch.arange(n) if groups is None else groups
    uniq = groups.unique()
    folds = min(folds, uniq.numel())
    perm = uniq[torch.randperm(uniq.numel(), generator=torch.Generator().manual_seed(seed))]
    pred = torch.empty_like(q)
    for f in range(folds):
        held = torch.isin(groups, perm[f::folds])
        model = _fit_one(cfg, x[~held], q[~held], ridge, epochs, lr, seed)
        pred[held] = _predict(model, x[held])
    return pred


def split_groups(groups: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """Bool mask of the images whose group falls in a seeded ``share`` of the groups (>= 1)."""
    uniq = groups.unique()
    perm = uniq[torch.randperm(uniq.numel(), generator=torch.Generator().manual_seed(seed + 1))]
    return torch.isin(groups, perm[: max(1, round(share * uniq.numel()))])


def calibrate(model: LengthPredictor, pred: torch.Tensor, q: torch.Tensor, targets: list[float],
              coverage: float) -> float:
    """Set the predictor's one free parameter (rule "margin": ``margin`` in dB, on a 0.01 dB
    grid; rule "risk": ``risk_weight``, on a 0.01 grid in log10) to the smallest value at which its
    decisions on held-out curves meet each target on at least ``coverage`` of the images whose
    curve reaches it, with the split-conformal finite-sample correction
    ``ceil((n + 1) * coverage) / n``; returns the value."""
    cfg = model.config
    risk = cfg.rule == "risk"
    name, lo, hi = ("risk_weight", -4.0, 6.0) if risk else ("margin", -3.0, 6.0)
    dense = model.dense(q)
    rows = torch.arange(q.shape[0])

    def covered(value: float) -> bool:
        setattr(cfg, name, 10.0**value if risk else value)
        for t in targets:
            reach = q[:, -1] >= t
            n = int(reach.sum())
            if n == 0:
                continue
            k = model.choose(pred, t)
            met = int(((dense[rows, k - 1] >= t - 1e-6) & reach).sum())
            if met < min(n, math.ceil((n + 1) * coverage)):
                return False
        return True

    for _ in range(40):  # bisection: coverage grows with either parameter (larger k, up to N)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if covered(mid) else (mid, hi)
    value = math.ceil(hi * 100) / 100
    setattr(cfg, name, 10.0**value if risk else value)
    return getattr(cfg, name)


def simulate(model: LengthPredictor, pred: torch.Tensor, q: torch.Tensor,
             target: float) -> dict[str, float]:
    """Out-of-fold decisions at ``target``: coverage and mean tokens against the true smallest k
    on the same (interpolated) curves, over the images whose curve reaches the target."""
    reach = q[:, -1] >= target
    k = model.choose(pred, target)
    met = model.dense(q)[torch.arange(q.shape[0]), k - 1] >= target - 1e-6
    n = reach.float().sum().clamp_min(1)
    oracle = model.choose(q, target, margins=False)
    return {"target": target, "reachable": float(reach.float().mean()),
            "met": float((met & reach).float().sum() / n),
            "tokens": float(k[reach].float().mean()) if reach.any() else float("nan"),
            "oracle_tokens": float(oracle[reach].float().mean()) if reach.any() else float("nan")}


def fit(data: dict[str, torch.Tensor], cfg: LengthPredictorConfig, args: argparse.Namespace
        ) -> tuple[LengthPredictor, dict]:
    """Choose the ridge strength by cross-validation (folds split by photo), fit, and calibrate
    the margin: with ``args.calibration`` > 0 on the held-out photos (one margin for the decisions
    at ``args.targets``, or per-length error quantiles without targets), else per-length
    out-of-fold quantiles on every image."""
    probe = LengthPredictor(cfg)
    images = data["images"].float() / 255.0 if "images" in data else None
    x = probe.features(data["z_q"], images if cfg.inputs == "tokens+image" else None)
    q = data["psnr"].float()
    groups = data.get("group", torch.arange(q.shape[0]))
    share = getattr(args, "calibration", 0.0)
    held = split_groups(groups, share, args.seed) if share > 0 else torch.zeros_like(groups,
                                                                                   dtype=bool)
    if held.all():
        raise ValueError(f"--calibration {share} leaves no photo to fit on")
    xt, qt, gt = x[~held], q[~held], groups[~held]
    base = (qt - qt.mean(0)).pow(2).mean().sqrt()  # the mean curve (in-sample: optimistic)
    scores = {}
    for ridge in ((0.01, 0.1, 1.0, 10.0, 100.0) if cfg.hidden == 0 else (1.0,)):
        pred = out_of_fold(cfg, xt, qt, ridge, args.folds, args.epochs, args.lr, args.seed, gt)
        scores[ridge] = (float((pred - qt).pow(2).mean().sqrt()), pred)
    ridge = min(scores, key=lambda r: scores[r][0])
    rmse, pred = scores[ridge]
    model = _fit_one(cfg, xt, qt, ridge, args.epochs, args.lr, args.seed)
    report = {"images": int(q.shape[0]), "photos": int(groups.unique().numel()),
              "lengths": list(model.lengths), "inputs": cfg.inputs, "ridge": ridge}
    if held.any():  # split conformal: the model is fitted without the calibration photos
        oof_err = pred - qt
        pred, q_eval = _predict(model, x[held]), q[held]
        if args.targets:
            cfg.margins = ()
            if getattr(args, "rule", "margin") == "risk":  # error scale from the training folds
                cfg.rule = "risk"
                cfg.sigma = tuple(float(v) for v in oof_err.pow(2).mean(0).sqrt().clamp_min(1e-3))
            calibrate(model, pred, q_eval, args.targets, args.coverage)
        else:
            cfg.margins = tuple(float(m) for m in torch.quantile(pred - q_eval, args.quantile,
                                                                 dim=0))
        report.update(calibration_images=int(held.sum()), coverage=args.coverage,
                      calibration_rmse=float((pred - q_eval).pow(2).mean().sqrt()))
    else:
        q_eval = qt
        cfg.margins = tuple(float(m) for m in torch.quantile(pred - qt, args.quantile, dim=0))
    fit_rmse = float((_predict(model, xt) - qt).pow(2).mean().sqrt())
    report.update(fit_rmse=fit_rmse, cv_rmse=rmse, mean_curve_rmse=float(base),
                  quantile=args.quantile, margin=cfg.margin, margins=list(cfg.margins),
                  rule=cfg.rule, risk_weight=cfg.risk_weight, sigma=list(cfg.sigma),
                  simulated=[simulate(model, pred, q_eval, t) for t in args.targets])
    log.info("ridge %g: fit rmse %.3f dB, out-of-fold rmse %.3f dB (mean curve %.3f dB)%s; "
             "rule %s, risk weight %.3g, margin %.2f dB, per-length margins %s", ridge, fit_rmse,
             rmse, float(base),
             f", held-out rmse {report['calibration_rmse']:.3f} dB on "
             f"{report['calibration_images']} images" if held.any() else "", cfg.rule,
             cfg.risk_weight, cfg.margin,
             " ".join(f"{m:.2f}" for m in cfg.margins) or "none")
    for s in report["simulated"]:
        log.info("simulated at %.1f dB (%s): met %.1f%% of reachable (%.0f%% reachable), tokens "
                 "%.1f vs oracle %.1f (%.2fx)", s["target"],
                 "calibration photos" if held.any() else "out of fold", 100 * s["met"],
                 100 * s["reachable"], s["tokens"], s["oracle_tokens"],
                 s["tokens"] / s["oracle_tokens"])
    return model, report


def main(argv: list[str] | None = None) -> Path:
    import json

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    tok = visualtok.load(args.tokenizer).eval()
    kw = decode_kwargs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "curves.safetensors"
    ks = parse_lengths(args.lengths, tok.max_tokens)
    if cache.is_file():
        data = load_file(str(cache))
        if "lengths" in data and data["lengths"].tolist() != ks:
            raise ValueError(f"{cache} holds curves at lengths {data['lengths'].tolist()}, not "
                             f"{ks}: pass --lengths to match or use another --out")
    else:
        paths = [p for p in list_images(args.images)
                 if not set(args.exclude) & set(p.relative_to(args.images).parts[:-1])]
        g = torch.Generator().manual_seed(args.seed)
        pick = torch.randperm(len(paths), generator=g)[: args.max_images].tolist()
        data = collect_curves(tok, [paths[i] for i in sorted(pick)], args.batch_size, kw, ks)
        save_file(data, str(cache))
    cfg = LengthPredictorConfig(num_tokens=tok.max_tokens, token_dim=data["z_q"].shape[-1],
                                lengths=tuple(ks), hidden=args.hidden, inputs=args.inputs,
                                tokenizer=str(args.tokenizer), decode_kwargs=kw)
    model, report = fit(data, cfg, args)
    out = model.save_pretrained(args.out)
    (args.out / "fit.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} (out-of-fold rmse {report['cv_rmse']:.3f} dB over "
          f"{report['images']} images)")
    return out


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
