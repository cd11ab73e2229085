"""Train an image tokenizer from a YAML recipe.

    python train/train_tokenizer.py --config configs/titok_tiny.yaml
    accelerate launch --num_processes 2 train/train_tokenizer.py --config configs/titok_tiny.yaml
    python train/train_tokenizer.py --config configs/titok_tiny.yaml \
        --set trainer.steps=50 --set data.path=/data/photos --device cuda
"""

from __future__ import annotations

import argparse
import logging

from visualtok.train import run_training
from visualtok.train.config import parse_overrides


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="YAML training recipe (configs/*.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, dotted (repeatable)",
    )
    p.add_argument("--output-dir", help="shortcut for --set trainer.output_dir=...")
    p.add_argument("--device", choices=["cpu", "cuda"], help="cpu forces CPU; cuda = accelerate")
    args = p.parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.output_dir:
        overrides["trainer.output_dir"] = args.output_dir
    if args.device == "cpu":
        overrides["trainer.device"] = "cpu"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = run_training(args.config, overrides)
    print(f"done: {out}")


if __name__ == "__main__":
    main()
