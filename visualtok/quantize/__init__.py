"""Quantizer core: one protocol (``Quantizer``), one code description (``CodeLayout``)."""

from .base import QuantOutput, Quantizer, check_latents, fp32_no_autocast
from .layout import CodeLayout

__all__ = ["CodeLayout", "QuantOutput", "Quantizer", "check_latents", "fp32_no_autocast"]
