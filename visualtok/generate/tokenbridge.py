"""TokenBridge: discrete generation over a frozen continuous tokenizer (Wang et al. 2025).

A continuous tokenizer (TiTok in VAE mode, ``continuous=True``) keeps its weights; its latents are
quantized after training, channel by channel, by ``DimensionwiseQuantizer`` (``type: ptq``): each
of the ``C`` channels becomes one digit of ``B`` Gaussian-quantile bins, layout ``(B,) * C``
(16 x 64 = 2^96 codes per token, far beyond a flat softmax). The generator is a GPT with the
per-factor causal head: channel ``c`` is predicted from the trunk state and channels ``< c``, in a
fixed order. TokenBridge reports 1.94 gFID this way against 15.7 with independent per-channel
softmaxes.

    tok = create_model("titok_tiny", mode="vae", token_size=16,
                       quantizer={"type": "ptq", "bins": 64, "dim": 16, "per_channel": True})
    calibrate_tokenizer(tok, image_batches)          # per-channel ranges, no training
    gpt = tokenbridge_gpt(tok, "gpt_tiny")           # head="factor", layout (64,) * 16
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..registry import create_model

__all__ = ["continuous_latents", "calibrate_tokenizer", "tokenbridge_gpt"]


def _check_ptq_tokenizer(tokenizer: nn.Module) -> None:
    if not getattr(tokenizer, "continuous", False):
        raise ValueError(
            "TokenBridge needs a continuous tokenizer (continuous=True, e.g. TiTok mode='vae')"
        )
    q = getattr(tokenizer, "quantizer", None)
    if q is None or getattr(q.layout, "kind", None) != "ptq":
        raise ValueError(
            "the continuous tokenizer must carry a post-training quantizer "
            "(quantizer type 'ptq') to be tokenized"
        )


@torch.no_grad()
def continuous_latents(tokenizer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The latents the post-training quantizer sees, ``[B, *S, C]`` (the posterior mean)."""
    _check_ptq_tokenizer(tokenizer)
    return tokenizer.posterior_mean(images)


@torch.no_grad()
def calibrate_tokenizer(tokenizer: nn.Module, image_batches: Iterable[torch.Tensor]) -> nn.Module:
    """Fit the quantizer's ranges on the latents of ``image_batches`` (``[B, 3, H, W]`` each)."""
    _check_ptq_tokenizer(tokenizer)
    tokenizer.eval()
    tokenizer.quantizer.calibrate(continuous_latents(tokenizer, x) for x in image_batches)
    return tokenizer


def tokenbridge_gpt(tokenizer: nn.Module, preset: str = "gpt_tiny", **overrides: Any) -> nn.Module:
    """A GPT preset over ``tokenizer``'s PTQ codes with the per-factor causal head."""
    _check_ptq_tokenizer(tokenizer)
    overrides.setdefault("head", "factor")
    overrides.setdefault("num_tokens", math.prod(tokenizer.token_shape))
    return create_model(preset, layout=tokenizer.code_layout, **overrides)
