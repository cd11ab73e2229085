"""Train a GPT generator on token shards from a YAML recipe (``task: generator``).

    python train/pretokenize.py --tokenizer runs/titok_tiny/model --images ../shared/data/images \
        --out tokens/photos
    python train/train_generator.py --config configs/gpt_tiny.yaml --set data.path=tokens/photos
    accelerate launch --num_processes 8 train/train_generator.py --config configs/gpt_b.yaml
"""

from __future__ import annotations

from pathlib import Path

from visualtok.train import cli_main


def main(argv: list[str] | None = None) -> Path:
    out = cli_main(argv, __doc__, config_help="YAML recipe (configs/gpt_*.yaml)")
    print(f"done: {out}")
    return out


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
