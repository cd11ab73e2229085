"""visualtok.train: one training loop (accelerate) for tokenizers, codecs and generators.

Front door: ``run_training(config_path, overrides=None) -> output_dir``. Tasks plug in through
``visualtok.train.task`` (``Task``, ``StepOutput``, ``register_task``).
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig, load_train_config
from .task import StepOutput, Task, register_task

__all__ = [
    "run_training",
    "TrainConfig",
    "load_train_config",
    "Task",
    "StepOutput",
    "register_task",
]


def run_training(config_path: Any, overrides: dict[str, Any] | None = None):
    """Train from a YAML recipe (+ overrides like ``{"trainer.steps": 10}``); returns output dir."""
    from .trainer import run_training as _run

    return _run(config_path, overrides)
