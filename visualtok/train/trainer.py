"""The one training loop, on accelerate, for tokenizers, codecs and generators.

``run_training(config_path, overrides) -> output_dir`` loads a ``TrainConfig``, builds the model
preset and the task (``visualtok.train.task``), then runs ``trainer.steps`` steps. Per step, for
each of the task's optimizers in order: loss under autocast -> backward -> clip -> step -> lr from
the warmup+cosine schedule. EMA follows the ``"model"`` optimizer. Checkpoints are atomic and hold
everything needed to resume bit-exactly on the same hardware: modules, optimizers, EMA, task state,
sampler position and every process's RNG (``visualtok.train.checkpoint``).

Distributed: launch with ``accelerate launch``; each process gets its own shard of every epoch
from ``ResumableSampler`` (the data loader is not re-sharded by accelerate) and its own RNG stream
(seed + rank); the model is built from the same seed on every rank. Output directory::

    <output_dir>/train_config.yaml, checkpoints/, tensorboard/, model/ (save_pretrained at the end)
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..config import config_from_dict, config_to_dict
from ..data.sampler import ResumableSampler
from ..hub import CheckpointError, load_state_dict_strict
from ..quantize import input_checks
from . import checkpoint as ckpt
from .config import TrainConfig, load_train_config
from .optim import EMA, build_optimizer, lr_factor
from .task import Task, get_task_class

__all__ = ["Trainer", "run_training", "build_model"]

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig) -> nn.Module:
    """The preset ``model.name`` with ``model.overrides``, or the checkpoint ``model.init_from``."""
    if cfg.model.init_from:
        from ..hub import load

        model = load(cfg.model.init_from)
        return model.train()
    from ..registry import create_model

    return create_model(cfg.model.name, **cfg.model.overrides)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: checkpoint {a!r} vs now {b!r}"]


class Trainer:
    """Owns the accelerator, task, optimizers, EMA, sampler and checkpoints of one run."""

    def __init__(self, cfg: TrainConfig, model: nn.Module | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg.validate()
        self.cfg, t = cfg, cfg.trainer
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            cpu=(t.device == "cpu"),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=t.find_unused_parameters)
            ],
        )
        acc = self.accelerator
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.output_dir = Path(t.output_dir).resolve()
        self.ckpt_root = self.output_dir / "checkpoints"

        _seed_all(t.seed)  # identical model init on every rank
        model = model if model is not None else build_model(cfg)
        task_cls = get_task_class(cfg.task)
        loss_cfg = (
            config_from_dict(task_cls.loss_config_class, cfg.loss, where="loss")
            if task_cls.loss_config_class is not None
            else cfg.loss
        )
        self.task: Task = task_cls(model.train(), loss_cfg, cfg)
        self.dataset = self.task.build_dataset(train=True)
        if len(self.dataset) == 0:
            raise ValueError(f"empty dataset: {cfg.data.path} holds no items")
        self.sampler = ResumableSampler(
            len(self.dataset),
            seed=t.seed,
            rank=self.rank,
            world_size=self.world_size,
            min_per_rank=t.batch_size,
        )

        self.names = list(self.task.modules)
        opts = [
            build_optimizer(self.task.parameters(n), cfg.optim, discriminator=(n != "model"))
            for n in self.names
        ]
        prepared = acc.prepare(*[self.task.modules[n] for n in self.names], *opts)
        k = len(self.names)
        self.task.bind(dict(zip(self.names, prepared[:k])))
        self.optimizers = dict(zip(self.names, prepared[k:]))
        self.base_lrs = {n: [g["lr"] for g in o.param_groups] for n, o in self.optimizers.items()}
        self.ema = EMA(self.task.model, t.ema.decay, t.ema.start_step) if t.ema.enabled else None
        self.step = 0
        _seed_all(t.seed + 1000 * (self.rank + 1))  # per-process stream for dropout/perturbation
        self._writer = None
        self._unchecked_losses: list[tuple[str, int, torch.Tensor]] = []  # see _check_losses
        self.history: list[dict[str, float]] = []  # logged scalars (main process), with "step"

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict[str, Any]:
        m = self.task.model
        conf = getattr(m, "config", None)
        return {
            "task": self.cfg.task,
            "model_class": type(m).__name__,
            "model_config": config_to_dict(conf) if conf is not None else None,
            "world_size": self.world_size,
        }

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of ``self.step`` atomically (all ranks call this)."""
        acc = self.accelerator
        tmp, final = ckpt.checkpoint_dir_for(self.ckpt_root, self.step)
        if acc.is_main_process:
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        ckpt.save_state_file(ckpt.rng_state(), tmp / f"rng_rank{self.rank}.pt")
        acc.wait_for_everyone()
        out = None
        if acc.is_main_process:
            state = {
                "step": self.step,
                "meta": self._meta(),
                "modules": {
                    n: acc.unwrap_model(self.task.modules[n]).state_dict() for n in self.names
                },
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "ema": self.ema.state_dict() if self.ema else None,
                "sampler": self.sampler.state_dict(),
                "task": self.task.state_dict(),
            }
            ckpt.save_state_file(state, tmp / ckpt.STATE_NAME)
            out = ckpt.finalize_checkpoint(tmp, final, self.cfg.trainer.keep_last)
            log.info("checkpoint written: %s", out)
        acc.wait_for_everyone()
        return out

    def load_checkpoint(self, directory: Path) -> None:
        state = ckpt.load_state_file(directory / ckpt.STATE_NAME)
        meta, now = state.get("meta", {}), self._meta()
        if meta.get("task") != now["task"] or meta.get("model_class") != now["model_class"]:
            raise CheckpointError(
                f"{directory} is a checkpoint of task {meta.get('task')!r} / model "
                f"{meta.get('model_class')!r}; this run trains {now['task']!r} / "
                f"{now['model_class']!r}"
            )
        # task state first: it may set config values learned in training (FlexTok's calibrated
        # latent scaling factor), which the config comparison must then see
        self.task.load_state_dict(state.get("task", {}))
        now = self._meta()
        diff = _config_diff(meta.get("model_config"), now["model_config"])
        if diff:
            raise CheckpointError(
                f"{directory} was trained with another model config: " + "; ".join(diff[:10])
            )
        if sorted(state["modules"]) != sorted(self.names):
            raise CheckpointError(
                f"{directory} holds modules {sorted(state['modules'])} but this run trains "
                f"{sorted(self.names)} (e.g. loss.gan_weight adds a discriminator)"
            )
        for n in self.names:
            load_state_dict_strict(
                self.accelerator.unwrap_model(self.task.modules[n]),
                state["modules"][n],
                source=str(directory),
            )
            self.optimizers[n].load_state_dict(state["optimizers"][n])
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{directory} has no EMA weights but trainer.ema is enabled")
            self.ema.load_state_dict(state["ema"])
        self.sampler.load_state_dict(state["sampler"])
        rng_file = directory / f"rng_rank{self.rank}.pt"
        ckpt.set_rng_state(ckpt.load_state_file(rng_file))
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", directory, self.step)

    def _maybe_resume(self) -> None:
        resume = self.cfg.trainer.resume
        if resume == "none":
            return
        if resume == "auto":
            found = ckpt.latest_checkpoint(self.ckpt_root)
            if found is not None:
                self.load_checkpoint(found)
            return
        path = Path(resume)
        found = path if (path / ckpt.STATE_NAME).is_file() else ckpt.latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"trainer.resume={resume!r}: no complete checkpoint there")
        self.load_checkpoint(found)

    # ------------------------------------------------------------------ loop
    def _loader(self) -> DataLoader:
        t = self.cfg.trainer
        g = torch.Generator().manual_seed(t.seed * 7919 + self.sampler.epoch)
        return DataLoader(
            self.dataset,
            batch_size=t.batch_size,
            sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            drop_last=True,
            generator=g,
            worker_init_fn=_seed_worker,
            pin_memory=False,
        )

    def _set_lr(self) -> dict[str, float]:
        o, total = self.cfg.optim, self.cfg.trainer.steps
        f = lr_factor(self.step, total, o.warmup_steps, o.schedule, o.min_lr_ratio)
        for n, opt in self.optimizers.items():
            for g, base in zip(opt.param_groups, self.base_lrs[n]):
                g["lr"] = base * f
        return {f"lr/{n}": self.base_lrs[n][0] * f for n in self.names}

    def train_step(self, batch: Any) -> dict[str, float | torch.Tensor]:
        """One optimisation step of every active module; logs stay on the device (read at
        ``log_every`` by ``_log_scalars``, so a GPU step does not wait on the host)."""
        acc, clip = self.accelerator, self.cfg.optim.grad_clip
        logs: dict[str, float | torch.Tensor] = self._set_lr()
        for n in self.names:
            if not self.task.is_active(n, self.step):
                continue
            opt = self.optimizers[n]
            opt.zero_grad(set_to_none=True)
            with acc.autocast():
                out = self.task.compute_loss(n, batch, self.step)
            self._unchecked_losses.append((n, self.step, out.loss.detach()))
            acc.backward(out.loss)
            if clip:
                logs[f"grad_norm/{n}"] = acc.clip_grad_norm_(self.task.parameters(n), clip)
            opt.step()
            logs.update({k: v.detach() if isinstance(v, torch.Tensor) else v
                         for k, v in out.logs.items() if _is_scalar(v)})
        if self.ema is not None:
            self.ema.update(self.task.model, self.step)
        return logs

    def _check_losses(self) -> None:
        """``FloatingPointError`` naming the first step whose loss was NaN/inf since the last check
        (one host read for all of them; run before logging and before every checkpoint)."""
        pending, self._unchecked_losses = self._unchecked_losses, []
        if not pending:
            return
        finite = torch.isfinite(torch.stack([loss.float() for _, _, loss in pending]))
        if not bool(finite.all()):
            n, step, loss = pending[int((~finite).nonzero()[0])]
            raise FloatingPointError(f"non-finite {n} loss {float(loss)} at step {step}")

    def fit(self) -> Path:
        """Run (or resume) to ``trainer.steps``; returns the output directory."""
        acc, t = self.accelerator, self.cfg.trainer
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_config.yaml").write_text(
                yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
            )
        self._maybe_resume()
        device = acc.device
        media_batch = self._media_batch() if (acc.is_main_process and t.image_every) else None
        bar = None
        if t.progress and acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc="train", dynamic_ncols=True)
        it = iter(self._loader())
        while self.step < t.steps:
            try:
                batch = next(it)
            except StopIteration:
                self.sampler.next_epoch()
                it = iter(self._loader())
                continue
            self.sampler.advance(t.batch_size)
            with input_checks(self.task.model, False):  # the loss check below covers NaN
                logs = self.train_step(self.task.prepare_batch(batch, device))
            self.step += 1
            log_now = self.step % t.log_every == 0 or self.step == t.steps
            ckpt_now = self.step % t.ckpt_every == 0 or self.step == t.steps
            if log_now or ckpt_now:
                self._check_losses()
            if acc.is_main_process:
                if log_now:
                    values = self._log_scalars(logs)
                    if bar is not None:
                        bar.set_postfix(
                            {k: f"{v:.4g}" for k, v in values.items() if k.startswith("loss")}
                        )
                if media_batch is not None and (
                    self.step % t.image_every == 0 or self.step == t.steps
                ):
                    self._log_media(media_batch)
            if bar is not None:
                bar.update(1)
            if ckpt_now:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if acc.is_main_process:
            self.save_final()
        acc.wait_for_everyone()
        if self._writer is not None:
            self._writer.close()
        return self.output_dir

    def save_final(self) -> Path:
        """``save_pretrained`` of the trained model (EMA when enabled) to ``output_dir/model``."""
        model = self.task.model
        if self.ema is not None and self.cfg.trainer.ema.use_for_final:
            model = copy.deepcopy(model)
            self.ema.copy_to(model)
        return model.save_pretrained(self.output_dir / "model")

    # ------------------------------------------------------------------ logging
    @property
    def writer(self):
        if self._writer is None and self.cfg.trainer.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        return self._writer

    def _log_scalars(self, logs: dict[str, float | torch.Tensor]) -> dict[str, float]:
        logs = {k: float(v) for k, v in logs.items()}  # the one host read of the logs
        self.history.append({"step": self.step, **logs})
        if self.writer is not None:
            for k, v in logs.items():
                self.writer.add_scalar(k, v, self.step)
        log.info("step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
        return logs

    def _media_batch(self) -> Any:
        n = min(len(self.dataset), 8)
        items = [self.dataset[i] for i in range(n)]  # no seed -> deterministic centre crops
        return self.task.prepare_batch(
            torch.utils.data.default_collate(items), self.accelerator.device
        )

    def _log_media(self, batch: Any) -> None:
        if self.writer is None:
            return
        model, was_training = self.task.model, self.task.model.training
        model.eval()  # media are inference outputs: no dropout, no codebook or EMA updates
        try:
            with torch.random.fork_rng(devices=[]):
                media = self.task.log_media(batch)
        finally:
            model.train(was_training)
        for tag, imgs in media.items():
            if tag.startswith("audio/"):  # [B, T] waveforms in [-1, 1] (audio tasks)
                rate = int(getattr(self.task.model, "sample_rate", 16000))
                for i, wav in enumerate(imgs.detach().float().clamp(-1, 1).cpu()):
                    self.writer.add_audio(f"{tag}/{i}", wav, self.step, sample_rate=rate)
                continue
            self.writer.add_images(tag, imgs.detach().float().clamp(0, 1).cpu(), self.step)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def run_training(config_path: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Train from a YAML recipe (+ overrides such as ``{"trainer.steps": 10}``); -> output dir."""
    cfg = load_train_config(config_path, overrides)
    return Trainer(cfg).fit()
