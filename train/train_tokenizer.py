"""Train an image tokenizer from a YAML recipe.

    python train/train_tokenizer.py --config configs/titok_tiny.yaml
    accelerate launch --num_processes 2 train/train_tokenizer.py --config configs/titok_tiny.yaml
    python train/train_tokenizer.py --config configs/titok_tiny.yaml \
        --set trainer.steps=50 --set data.path=/data/photos --device cuda
"""

from __future__ import annotations

from visualtok.train import cli_main


def main(argv: list[str] | None = None) -> None:
    out = cli_main(argv, __doc__)
    print(f"done: {out}")


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
