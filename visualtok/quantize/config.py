"""``QuantizerConfig``: one strict config for every quantizer family, and ``build_quantizer``.

Models embed a ``QuantizerConfig`` in their own dataclass config, so any family plugs into any
tokenizer through configuration alone (``quantizer: {type: fsq, levels: [8, 8, 8, 5, 5, 5]}``).
Fields that belong to another family must stay at their defaults: ``validate`` rejects them, so a
misplaced option is an error rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated

from ..config import (
    Config,
    NonNegativeFloat,
    OpenUnitFloat,
    PositiveFloat,
    PositiveInt,
    Radix,
    Range,
    UnitFloat,
)
from ..registry import QUANTIZERS

__all__ = ["QuantizerConfig", "build_quantizer"]

# Fields each family reads (beyond the common ``type`` and ``dim``). RVQ stacks VQ codebooks, so it
# reads every VQ field plus its own.
_VQ_FIELDS = {
    "codebook_size",
    "l2_normalize",
    "beta",
    "ema",
    "ema_decay",
    "rotation_trick",
    "kmeans_init",
    "kmeans_iters",
    "dead_code_threshold",
    "chunk_size",
    "codebook_dim",
    "raw_codebook_rows",
}
_FAMILY_FIELDS: dict[str, set[str]] = {
    "vq": _VQ_FIELDS,
    "rvq": _VQ_FIELDS | {"num_quantizers", "quantizer_dropout", "dropout_per_sample",
                               "all_level_gradients"},
    "lfq": {
        "group_size",
        "entropy_weight",
        "diversity_gamma",
        "beta",
        "bit_scale",
        "entropy_temperature",
    },
    "fsq": {"levels"},
    "ptq": {"bins", "value_range", "per_channel", "latent_scale"},
}


@dataclass
class QuantizerConfig(Config):
    """Configuration of one quantizer. ``type`` picks the family; see ``_FAMILY_FIELDS``."""

    type: str = "vq"  # vq | lfq | fsq | rvq | ptq
    dim: PositiveInt = 12  # channels D of the latents [B, *S, D] fed to the quantizer
    # --- VQ / RVQ
    codebook_size: Radix = 4096  # K entries per codebook
    codebook_dim: PositiveInt | None = (
        None  # factorized codes: project D -> codebook_dim -> D (DAC); None = D
    )
    l2_normalize: bool = False  # cosine codebook: l2-normalise z and codebook before lookup
    # with l2_normalize: search on normalised vectors, but output / decode the raw codebook rows
    # and compute the losses on the raw (projected) latents (DAC)
    raw_codebook_rows: bool = False
    beta: NonNegativeFloat = 0.25  # commitment weight (VQ, RVQ, LFQ)
    ema: bool = False  # EMA codebook updates instead of a codebook loss
    ema_decay: OpenUnitFloat = 0.99
    rotation_trick: bool = False  # gradient through the rotation trick instead of straight-through
    kmeans_init: bool = False  # initialise the codebook by k-means on the first batch / calibrate()
    kmeans_iters: PositiveInt = 10
    # restart codes whose EMA usage falls below this (0 = off)
    dead_code_threshold: NonNegativeFloat = 0.0
    chunk_size: PositiveInt = 8192  # rows per chunk when the nearest-neighbour scores are chunked
    num_quantizers: PositiveInt = 8  # RVQ levels Q
    quantizer_dropout: UnitFloat = 0.0  # RVQ: probability of training on a random prefix of levels
    dropout_per_sample: bool = False  # RVQ: draw the prefix per sample (DAC), not per batch
    all_level_gradients: bool = False  # RVQ: every level's output and residual carry gradients
    # --- LFQ / binary
    # bits per factor g: codes are (2**g,) * (dim // g); entropy is group-wise
    group_size: PositiveInt = 8
    entropy_weight: NonNegativeFloat = 0.1
    # weight of the batch-entropy term inside the entropy loss
    diversity_gamma: NonNegativeFloat = 1.0
    bit_scale: PositiveFloat = 1.0  # quantized values are +-bit_scale
    # softmax temperature of the entropy loss (MAGVIT-v2: 1/100)
    entropy_temperature: PositiveFloat = 0.01
    # --- FSQ
    levels: Annotated[tuple[Radix, ...], Range(ge=1)] = (8, 5, 5, 5)  # one per channel
    # --- post-training, dimension-wise (TokenBridge)
    bins: Radix = 64  # B equal-probability Gaussian-quantile bins per channel
    value_range: PositiveFloat = 5.0  # global range +-value_range mapped to +-3 sigma
    per_channel: bool = False  # calibrate a range per channel instead of the global one
    # multiply latents by this before quantizing (TokenBridge: 0.2325)
    latent_scale: PositiveFloat = 1.0

    def validate(self) -> QuantizerConfig:
        super().validate()
        if self.type not in QUANTIZERS:
            raise ValueError(
                f"quantizer type must be one of {QUANTIZERS.names()}; got {self.type!r}"
            )
        allowed = _FAMILY_FIELDS[self.type] | {"type", "dim"}
        stray = [
            f.name
            for f in fields(self)
            if f.name not in allowed and getattr(self, f.name) != f.default
        ]
        if stray:
            raise ValueError(
                f"quantizer type {self.type!r} does not use option(s) {stray}; "
                f"its options are {sorted(allowed)}"
            )
        if self.type == "fsq" and self.dim != len(self.levels):
            raise ValueError(
                f"FSQ has one level per channel: dim must equal the number of levels "
                f"(len(levels) = {len(self.levels)} for levels {self.levels}); got dim={self.dim}"
            )
        if self.type == "lfq" and (self.group_size > 16 or self.dim % self.group_size):
            raise ValueError(
                f"LFQ group_size must be in [1, 16] and divide dim; "
                f"got group_size={self.group_size}, dim={self.dim}"
            )
        return self


def build_quantizer(config: QuantizerConfig | dict):
    """Instantiate the quantizer family named by ``config.type``."""
    from ..config import config_from_dict

    if isinstance(config, dict):
        config = config_from_dict(QuantizerConfig, config)
    config.validate()
    return QUANTIZERS.get(config.type)(config)
