"""``GeneratorTask``: train a ``GPT`` on token shards with the shared training loop.

``task: generator`` in a recipe selects it. ``data.path`` is a token folder written by
``train/pretokenize.py`` (``data.type: tokens``). Causal GPTs minimise the next-token NLL; a
bidirectional GPT (``causal: false``) the MaskGIT masked-token NLL with a random mask from
``loss.mask_schedule``. Label dropout for CFG happens inside ``GPT.forward`` in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..config import Config
from ..generate.gpt import GPT
from ..generate.maskgit import random_mask
from ..generate.tokens import TokenDataset
from ..registry import register_task
from .task import StepOutput, Task

__all__ = ["GeneratorLossConfig", "GeneratorTask"]


@dataclass
class GeneratorLossConfig(Config):
    # MaskGIT training mask ratio (bidirectional GPTs only)
    mask_schedule: Literal["arccos", "cosine", "linear"] = "arccos"
    tokenizer: str | None = None  # tokenizer to bind for input="features" (name or checkpoint)


@register_task("generator")
class GeneratorTask(Task):
    loss_config_class = GeneratorLossConfig

    def __init__(self, model: GPT, loss_config: GeneratorLossConfig, train_config: Any) -> None:
        if not isinstance(model, GPT):
            raise TypeError(
                f"task 'generator' trains a GPT; model.name built a {type(model).__name__}"
            )
        super().__init__(model, loss_config, train_config)
        if model.input_type == "features":
            if not loss_config.tokenizer:
                raise ValueError(
                    "input='features' needs loss.tokenizer (its quantizer gives the features)"
                )
            from ..hub import load

            model.bind_quantizer(load(loss_config.tokenizer).quantizer)

    def build_dataset(self, train: bool = True) -> TokenDataset:
        data = self.train_config.data
        if data.path is None:
            raise ValueError("data.path must be a token folder (made by train/pretokenize.py)")
        ds = TokenDataset(data.path)
        if ds.layout.radices != self.model.code_layout.radices:
            raise ValueError(
                f"token folder {data.path} has code layout {ds.layout.radices} but the GPT "
                f"expects {self.model.code_layout.radices}: set model.overrides.radices"
            )
        names = tuple(ds.meta.get("class_names") or ())
        cfg = self.model.config
        if names and not cfg.class_names and len(names) == cfg.num_classes:
            cfg.class_names = names  # saved with the checkpoint: samples are labelled by name
        n = int(torch.tensor(ds.meta["token_shape"]).prod())
        if n + self.model.delay_steps > self.model.config.num_tokens:
            extra = f" (+ {self.model.delay_steps} delay steps)" if self.model.delay_steps else ""
            raise ValueError(
                f"token folder has {n} tokens per item{extra}; the GPT context is "
                f"{self.model.config.num_tokens}"
            )
        return ds

    def compute_loss(self, name: str, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        model = self.modules["model"]
        codes = batch["codes"]
        labels = batch["label"] if self.model.config.num_classes else None
        if self.model.config.causal:
            out = model(codes, labels)
        else:
            n = codes[0, ..., 0].numel()
            mask = random_mask(
                codes.shape[0], n, self.loss_config.mask_schedule, device=codes.device
            )
            out = model(codes, labels, mask)
        return StepOutput(out.loss, {"nll": out.loss.detach()})
