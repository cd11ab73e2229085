"""Quantizer core: one protocol (``Quantizer``), one code description (``CodeLayout``), one config.

Families (one file each): ``vq`` (VectorQuantizer), ``lfq`` (LookupFreeQuantizer), ``fsq``
(FiniteScalarQuantizer), ``rvq`` (ResidualVectorQuantizer), ``ptq`` (DimensionwiseQuantizer).
Build any of them with ``build_quantizer(QuantizerConfig(type=..., ...))``.
"""

from .base import Quantizer, QuantOutput, check_latents, fp32_no_autocast, input_checks
from .config import QuantizerConfig, build_quantizer
from .layout import CodeLayout

__all__ = [
    "CodeLayout",
    "QuantOutput",
    "Quantizer",
    "QuantizerConfig",
    "build_quantizer",
    "check_latents",
    "input_checks",
    "fp32_no_autocast",
]
