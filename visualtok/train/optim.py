"""Optimizers, the warmup + cosine schedule, and EMA weights."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from .config import OptimConfig

__all__ = ["build_optimizer", "lr_factor", "EMA"]


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: OptimConfig, discriminator: bool = False
) -> torch.optim.Optimizer:
    """AdamW; matrices get weight decay, vectors (norms, biases) do not."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to optimize: the module has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    lr = (cfg.disc_lr or cfg.lr) if discriminator else cfg.lr
    betas = (cfg.disc_betas or cfg.betas) if discriminator else cfg.betas
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr at ``step``: linear warmup, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's floating parameters and buffers.

    ``shadow = decay * shadow + (1 - decay) * param`` after each step from ``start_step`` (a plain
    copy before). Integer buffers (counters, code usage) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, start_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay}")
        self.decay, self.start_step = decay, start_step
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay if step >= self.start_step else 0.0
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.dtype.is_floating_point and decay > 0:
                s.lerp_(v.detach().to(s.dtype), 1.0 - decay)
            else:
                s.copy_(v.detach())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(
                f"EMA state does not match the model: keys differ {sorted(missing)[:10]}"
            )
        for k, v in state.items():
            self.shadow[k].copy_(v)
