"""``TrainConfig``: the one strict config tree every training run is described by.

A YAML recipe maps one to one onto these dataclasses (unknown keys are a ``ValueError`` naming
them). Sections:

* ``model``: a registry preset name plus overrides (or ``init_from`` a checkpoint directory);
* ``data``: which dataset and how to crop/batch it (``visualtok.data.build_dataset``);
* ``optim``: AdamW, cosine schedule with warmup, gradient clipping, discriminator optimizer;
* ``loss``: task-specific; validated strictly by the task's own ``loss_config_class``;
* ``trainer``: steps, batch size, intervals, checkpoints, precision, EMA, RobusTok, nested dropout.

``task`` names the task (``tokenizer``, ``generator``, ...), see ``visualtok.train.task``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ..config import (
    Config,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitFloat,
    PositiveFloat,
    PositiveInt,
    Range,
    UnitFloat,
    config_from_dict,
    load_yaml,
)
from ..data.config import DataConfig

Beta = Annotated[float, Range(ge=0, lt=1)]  # an Adam beta

__all__ = [
    "ModelSection",
    "DataConfig",
    "OptimConfig",
    "RobustnessConfig",
    "NestedDropoutConfig",
    "TokenizerLossConfig",
    "EMAConfig",
    "TrainerConfig",
    "TrainConfig",
    "load_train_config",
    "apply_overrides",
    "parse_overrides",
]


@dataclass
class TokenizerLossConfig(Config):
    """The ``loss:`` section of a tokenizer training config (the image and video tasks)."""

    reconstruction: Literal["l1", "l2"] = "l2"
    reconstruction_weight: NonNegativeFloat = 1.0
    quantizer_weight: NonNegativeFloat = 1.0  # times the quantizer's losses["total"]
    perceptual_weight: NonNegativeFloat = 0.0
    # "lpips" (VGG16 + learned heads, needs perceptual_weights) or "inception" (Inception
    # perceptual loss on the FID Inception from the eval extra; not LPIPS)
    perceptual_network: Literal["lpips", "inception"] = "lpips"
    # LPIPS weights file (needed when perceptual_network is lpips and perceptual_weight > 0)
    perceptual_weights: str | None = None
    perceptual_taps: tuple[int, ...] = (5, 9, 14)  # inception: block indices (see losses.py)
    perceptual_size: PositiveInt = 299  # inception: input resolution (299 = the FID protocol)
    gan_weight: NonNegativeFloat = 0.0  # 0 = no discriminator
    gan_start_step: NonNegativeInt = 0  # delayed start of both discriminator and adversarial term
    adaptive_gan_weight: bool = True
    lecam_weight: NonNegativeFloat = 0.0
    lecam_decay: OpenUnitFloat = 0.999
    disc_channels: PositiveInt = 64
    disc_layers: PositiveInt = 3
    proxy_teacher: str | None = None  # two-stage stage 1: MaskGIT-VQGAN checkpoint for proxy codes
    posttrain_mix: UnitFloat = 0.5  # decoder post-training: share of samples decoding file tokens
    # HSR / semantic alignment weight at a 1-token prefix (0 = off)
    semantic_weight: NonNegativeFloat = 0.0
    semantic_teacher: str = "inception"  # a registered teacher (train/semantic.py); see its label
    semantic_min_ratio: UnitFloat = 0.1  # weight at the full length, relative to semantic_weight
    semantic_power: PositiveFloat = 1.0  # decay shape along the prefix length (1 = linear)

    def validate(self) -> TokenizerLossConfig:
        super().validate()
        if self.perceptual_weight > 0 and self.perceptual_network == "lpips":
            if not self.perceptual_weights:
                raise ValueError(
                    f"loss.perceptual_weight is {self.perceptual_weight} but "
                    "loss.perceptual_weights (an LPIPS-VGG weights file) is not set: set it, or "
                    "set perceptual_weight: 0 to train without the perceptual loss"
                )
            if not Path(self.perceptual_weights).is_file():
                raise FileNotFoundError(
                    f"loss.perceptual_weights: LPIPS weights file not found: "
                    f"{self.perceptual_weights}"
                )
        if self.semantic_weight > 0:
            from ..registry import TEACHERS

            if self.semantic_teacher not in TEACHERS:
                raise ValueError(
                    f"unknown semantic_teacher {self.semantic_teacher!r} (loss.semantic_teacher); "
                    f"registered teachers: {TEACHERS.names()}"
                )
        return self


@dataclass
class ModelSection(Config):
    name: str = "titok_tiny"  # registry preset, built with create_model(name, **overrides)
    overrides: dict[str, Any] = field(default_factory=dict)  # preset config overrides
    init_from: str | None = None  # a visualtok checkpoint dir to start from (fine-tuning)


@dataclass
class OptimConfig(Config):
    lr: PositiveFloat = 1e-4
    betas: tuple[Beta, Beta] = (0.9, 0.99)
    weight_decay: NonNegativeFloat = 1e-4
    warmup_steps: NonNegativeInt = 0
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine | constant
    min_lr_ratio: UnitFloat = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: PositiveFloat | None = 1.0  # max global grad norm; None disables clipping
    disc_lr: PositiveFloat | None = None  # discriminator lr (None = lr)
    disc_betas: tuple[Beta, Beta] | None = None


@dataclass
class RobustnessConfig(Config):
    """RobusTok latent perturbation: replace codes by nearby codes with an annealed rate."""

    enabled: bool = False
    rate_start: UnitFloat = 0.0  # perturbation probability at step start_step
    rate_end: UnitFloat = 0.5  # ... reached at end_step (linear), held afterwards
    # family-specific (see Quantizer.perturb): VQ k-nearest (1 = itself),
    strength_start: PositiveInt = 2
    strength_end: PositiveInt = 2  # FSQ/PTQ +-levels, LFQ flipped bits, RVQ fine levels
    start_step: NonNegativeInt = 0
    end_step: NonNegativeInt | None = None  # None = last training step


@dataclass
class NestedDropoutConfig(Config):
    """Keep a random prefix of k of the N 1D tokens before decoding (ordered tokens)."""

    enabled: bool = False
    # uniform: k ~ U{min_tokens..N}; pow2: k in {min, 2min, ..., N}
    distribution: Literal["uniform", "pow2"] = "uniform"
    per_sample: bool = True  # a different k per sample (masking) instead of one k per batch
    min_tokens: PositiveInt = 1
    prob: UnitFloat = 1.0  # probability that a batch is truncated at all


@dataclass
class EMAConfig(Config):
    enabled: bool = False
    decay: OpenUnitFloat = 0.999
    start_step: NonNegativeInt = 0  # copy the weights until this step, then average
    use_for_final: bool = True  # the final save_pretrained model holds the EMA weights


@dataclass
class TrainerConfig(Config):
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 8  # per process
    seed: int = 0
    output_dir: str = "runs/run"
    log_every: PositiveInt = 10
    image_every: NonNegativeInt = 200  # reconstruction images to TensorBoard (0 = never)
    ckpt_every: PositiveInt = 200
    keep_last: PositiveInt = 2  # checkpoints kept on disk
    resume: str = "auto"  # auto (latest in output_dir if any) | none | a checkpoint dir
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # no | bf16 | fp16 (bf16 autocast on GPU)
    device: str | None = None  # None = accelerate's choice; "cpu" forces CPU
    find_unused_parameters: bool = True
    progress: bool = True  # tqdm on the main process
    tensorboard: bool = True
    ema: EMAConfig = field(default_factory=EMAConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    nested_dropout: NestedDropoutConfig = field(default_factory=NestedDropoutConfig)


@dataclass
class TrainConfig(Config):
    task: str = "tokenizer"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict[str, Any] = field(default_factory=dict)  # strict per task: Task.loss_config_class
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    description: str = ""  # free text: what this recipe is for

    def validate(self) -> TrainConfig:
        super().validate()
        from .task import get_task_class  # the task's own loss config checks the loss section

        loss_cls = get_task_class(self.task).loss_config_class
        if loss_cls is not None:
            config_from_dict(loss_cls, self.loss, where="loss")
        return self


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["trainer.steps=50", "optim.betas=[0.9, 0.95]"]`` -> ``{"trainer.steps": 50, ...}``.

    Values are YAML, except that YAML 1.1's ``yes/no/on/off`` stay strings (``mixed_precision=no``).
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value (e.g. trainer.steps=50); got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
            parsed = value.strip()
        out[key.strip()] = parsed
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Merge ``overrides`` into a config dict. Keys: dotted (``trainer.steps``) or nested."""
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and "." not in key and isinstance(data.get(key), dict):
            apply_overrides(data[key], value)
        else:
            _set_dotted(data, key, value)
    return data


def _resolve_path(p: str | None, base: Path) -> str | None:
    if p is None or "://" in p:
        return p
    path = Path(os.path.expanduser(p))
    return str(path if path.is_absolute() else (base / path).resolve())


def load_train_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """YAML recipe (+ overrides) -> validated ``TrainConfig``.

    ``$VISUALTOK_DATA`` replaces ``data.path`` (an explicit override still wins). Relative
    ``data.path``/``data.token_file``/``model.init_from`` resolve against the config file's folder's
    parent-of-``configs`` convention: relative to the repository root when the file lives in
    ``configs/``, else relative to the file's folder.
    """
    data = load_yaml(path) if path is not None else {}
    env_data = os.environ.get("VISUALTOK_DATA")
    if env_data:
        data.setdefault("data", {})["path"] = env_data
    apply_overrides(data, overrides)
    cfg = config_from_dict(TrainConfig, data, source=str(path) if path else None)
    if path is not None:
        folder = Path(path).resolve().parent
        base = folder.parent if folder.name == "configs" else folder
        cfg.data.path = _resolve_path(cfg.data.path, base)
        cfg.data.token_file = _resolve_path(cfg.data.token_file, base)
        cfg.model.init_from = _resolve_path(cfg.model.init_from, base)
    return cfg.validate()
