"""Train a GPT generator on token shards from a YAML recipe (``task: generator``).

    python train/pretokenize.py --tokenizer runs/titok_tiny/model --images ../shared/data/images \
        --out tokens/photos
    python train/train_generator.py --config configs/gpt_tiny.yaml --set data.path=tokens/photos
    accelerate launch --num_processes 8 train/train_generator.py --config configs/gpt_b.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from visualtok.train import run_training  # noqa: E402
from visualtok.train.config import parse_overrides  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe (configs/gpt_*.yaml)")
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
    return out


if __name__ == "__main__":
    main()
