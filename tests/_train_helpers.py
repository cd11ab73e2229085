"""Helpers for the training tests: a tiny image folder and tiny configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image


def write_photos(root: Path, photos) -> Path:
    """Save ``[N, 3, H, W]`` photos as PNGs under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(photos):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(root / f"photo{i}.png")
    return root


def tiny_config(data: Path, out: Path, **sections: Any) -> dict[str, Any]:
    """A titok_tiny (32x32, 16 tokens) run on ``data`` writing to ``out``; ``sections`` merge in."""
    cfg: dict[str, Any] = {
        "task": "tokenizer",
        "model": {
            "name": "titok_tiny",
            "overrides": {
                "image_size": 32,
                "num_latent_tokens": 16,
                "encoder_width": 64,
                "decoder_width": 64,
            },
        },
        "data": {"type": "images", "path": str(data), "image_size": 32, "resize_short": 40},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "loss": {"reconstruction": "l2"},
        "trainer": {
            "steps": 6,
            "batch_size": 2,
            "output_dir": str(out),
            "log_every": 1,
            "image_every": 0,
            "ckpt_every": 3,
            "progress": False,
            "tensorboard": False,
        },
    }
    for k, v in sections.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                if isinstance(vv, dict) and isinstance(cfg[k].get(kk), dict):
                    cfg[k][kk].update(vv)
                else:
                    cfg[k][kk] = vv
        else:
            cfg[k] = v
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_gpt_tiny_on_tokens(tokens: Path, out: Path, steps: int, batch_size: int,
                             **model: Any):
    """Train ``configs/gpt_tiny.yaml`` (with ``model`` overrides) on a token folder for ``steps``
    on CPU; -> (trainer, model dir, (first, last) logged NLL)."""
    from visualtok.train.config import load_train_config
    from visualtok.train.trainer import Trainer

    overrides = {
        "data.path": str(tokens),
        "model.overrides": model,
        "trainer.steps": steps,
        "trainer.batch_size": batch_size,
        "trainer.output_dir": str(out),
        "trainer.device": "cpu",
        "trainer.tensorboard": False,
        "trainer.progress": False,
        "trainer.ckpt_every": 1000,
        "trainer.log_every": 5,
        "optim.warmup_steps": 5,
    }
    repo = Path(__file__).resolve().parents[1]
    trainer = Trainer(load_train_config(repo / "configs" / "gpt_tiny.yaml", overrides))
    model_dir = Path(trainer.fit()) / "model"
    key = next(k for k in trainer.history[0] if "nll" in k)
    return trainer, model_dir, (trainer.history[0][key], trainer.history[-1][key])
