"""The task protocol: what a model contributes to the one training loop.

The loop (``visualtok.train.trainer``) owns everything generic: accelerate, data order, optimizers,
schedules, clipping, EMA, checkpoints, logging. A ``Task`` owns the modules and the losses:

* ``modules``: ``{name: nn.Module}``, one optimizer per entry, stepped in this order every step
  (e.g. ``{"model": ..., "discriminator": ...}``). The loop wraps them with ``accelerator.prepare``
  (DDP) and hands the wrapped versions back through ``bind``; compute losses only through
  ``self.modules[...]`` *forward calls* so DDP synchronises gradients.
* ``model``: the unwrapped module saved with ``save_pretrained`` at the end (and averaged by EMA).
* ``compute_loss(name, batch, step) -> StepOutput``: the loss for optimizer ``name``. It is called
  for each name in order within one step, so a GAN task can reuse the reconstruction of the
  ``"model"`` call in the ``"discriminator"`` call.
* ``is_active(name, step)``: skip an optimizer on some steps (delayed discriminator start).

Register a task with ``@register_task("name")``; the YAML ``task:`` field picks it. A task's
``loss`` section is parsed strictly into its ``loss_config_class``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..registry import TASKS, register_task

if TYPE_CHECKING:
    from .config import TrainConfig

__all__ = ["StepOutput", "Task", "register_task", "get_task_class"]


@dataclass
class StepOutput:
    """One optimizer's loss for one step, plus detached scalars (and optional tensors) to log."""

    loss: torch.Tensor  # scalar, requires grad
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


class Task:
    """Base class: subclass, set ``loss_config_class``, build ``self.modules``, the loss."""

    loss_config_class: ClassVar[type | None] = None  # dataclass for the YAML ``loss`` section
    task_name: ClassVar[str] = ""  # the ``task:`` name it is registered under

    def __init__(self, model: nn.Module, loss_config: Any, train_config: TrainConfig) -> None:
        self.model = model  # unwrapped; saved with save_pretrained and averaged by EMA
        self.loss_config = loss_config
        self.train_config = train_config
        self.modules: dict[str, nn.Module] = {"model": model}

    # ---------------------------------------------------------------- required
    def compute_loss(self, name: str, batch: Any, step: int) -> StepOutput:
        """Loss of optimizer ``name`` at ``step`` (0-based) on ``batch`` (already on device)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- optional hooks
    def bind(self, prepared: dict[str, nn.Module]) -> None:
        """Receive the accelerate-wrapped modules (same keys); used for forward calls."""
        self.modules = dict(prepared)

    def is_active(self, name: str, step: int) -> bool:
        """Whether optimizer ``name`` takes a step at ``step`` (default: always)."""
        return True

    def parameters(self, name: str) -> list[nn.Parameter]:
        """Trainable parameters of optimizer ``name`` (default: those with ``requires_grad``)."""
        return [p for p in self.modules[name].parameters() if p.requires_grad]

    def build_dataset(self, train: bool = True) -> torch.utils.data.Dataset:
        """The map-style dataset of this run (default: ``build_dataset(config.data)``).

        Items may be anything ``default_collate`` handles; indices come from the loop's resumable
        sampler as ``(index, seed)`` pairs so random crops are reproducible on resume.
        """
        from ..data import build_dataset

        return build_dataset(self.train_config.data, train=train)

    def prepare_batch(self, batch: Any, device: torch.device) -> Any:
        """Move a collated batch to ``device`` (tensors, and tensors inside dicts/lists)."""
        return _to_device(batch, device)

    @torch.no_grad()
    def log_media(self, batch: Any) -> dict[str, torch.Tensor]:
        """Images to log, ``{tag: [B, 3, H, W] in [0, 1]}``; must not use global RNG. The trainer
        calls it with the model in eval mode (and restores the mode after)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Extra task state that must survive a resume (e.g. LeCam running means)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def get_task_class(name: str) -> type[Task]:
    """The ``Task`` subclass registered as ``name`` (``visualtok.registry.TASKS``)."""
    return TASKS.get(name)
