"""visualtok.train: one training loop (accelerate) for tokenizers, codecs and generators.

Front door: ``run_training(config_path, overrides=None) -> output_dir``. Tasks plug in through
``visualtok.train.task`` (``Task``, ``StepOutput``, ``register_task``). ``cli_main`` is the
command-line front door shared by the ``train/train_*.py`` scripts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .config import TrainConfig, load_train_config
from .task import StepOutput, Task, register_task

__all__ = [
    "run_training",
    "cli_main",
    "TrainConfig",
    "load_train_config",
    "Task",
    "StepOutput",
    "register_task",
]


def run_training(config_path: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train from a YAML recipe (+ overrides like ``{"trainer.steps": 10}``); returns output dir."""
    from .trainer import run_training as _run

    return _run(config_path, overrides)


def cli_main(
    argv: list[str] | None,
    description: str | None,
    config_help: str = "YAML training recipe (configs/*.yaml)",
) -> Path:
    """Parse a training script's command line, set up logging, train; returns the output dir.

    Options: ``--config`` (required), ``--set KEY=VALUE`` (repeatable, dotted), ``--output-dir``
    (shortcut for ``trainer.output_dir``) and ``--device cpu|cuda`` (``cpu`` forces the CPU).
    """
    from .config import parse_overrides

    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--config", required=True, help=config_help)
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
    return run_training(args.config, overrides)
