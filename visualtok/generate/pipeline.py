"""Tokenizer + generator glue: sample codes with a GPT, decode them to images.

``generate_images`` draws codes from a causal GPT (``autoregressive.generate_ar``) or a
bidirectional one (``maskgit.generate_maskgit``), reshapes the ``N`` generated tokens to the
tokenizer's token shape ``S`` and decodes. Generating ``k < N`` tokens (FlexTok-style variable
length) needs a tokenizer with ``supports_prefix``: it decodes the prefix ``[B, k, F]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["class_balanced_labels", "check_compatible", "codes_to_token_shape", "generate_images",
           "generate_audio"]


def class_balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """``[0, 1, ..., C-1, 0, 1, ...]`` (``num_samples`` long): every class equally often."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    return torch.arange(num_samples) % num_classes


def check_compatible(gpt, tokenizer) -> None:
    """The GPT must model this tokenizer's code layout and fit its tokens in its context."""
    if gpt.code_layout.radices != tokenizer.code_layout.radices:
        raise ValueError(
            f"GPT code layout {gpt.code_layout.radices} does not match the tokenizer's "
            f"{tokenizer.code_layout.radices}"
        )
    n = math.prod(tokenizer.token_shape)
    if gpt.config.num_tokens < n:
        raise ValueError(
            f"the tokenizer makes {n} tokens per image; the GPT context is {gpt.config.num_tokens}"
        )


def codes_to_token_shape(codes: torch.Tensor, tokenizer) -> torch.Tensor:
    """Generated codes ``[B, k, F]`` -> ``[B, *S, F]`` (1D prefixes stay ``[B, k, F]``)."""
    shape = tuple(tokenizer.token_shape)
    B, k, nf = codes.shape
    if k == math.prod(shape):
        return codes.reshape(B, *shape, nf)
    if len(shape) == 1 and getattr(tokenizer, "supports_prefix", False):
        return codes
    raise ValueError(
        f"generated {k} tokens but the tokenizer needs {math.prod(shape)} "
        f"(token shape {shape}) and does not decode a prefix"
    )


@torch.no_grad()
def generate_images(
    gpt,
    tokenizer,
    labels: Any = None,
    num_samples: int | None = None,
    num_tokens: int | None = None,
    sampler: str = "ar",
    num_steps: int = 8,
    generator: torch.Generator | None = None,
    **sampling: Any,
) -> torch.Tensor:
    """Sample images ``[B, 3, H, W]`` in [0, 1]: GPT codes decoded by ``tokenizer``."""
    check_compatible(gpt, tokenizer)
    n = math.prod(tokenizer.token_shape)
    if sampler == "ar":
        k = n if num_tokens is None else num_tokens
        codes = gpt.generate(labels, num_samples=num_samples, num_tokens=k,
                             generator=generator, **sampling)
    elif sampler == "maskgit":
        from .maskgit import generate_maskgit

        codes = generate_maskgit(
            gpt, labels, num_samples, num_steps, generator=generator, **sampling
        )
    else:
        raise ValueError(f"sampler must be 'ar' or 'maskgit'; got {sampler!r}")
    return tokenizer.decode(codes_to_token_shape(codes, tokenizer))


@torch.no_grad()
def generate_audio(
    gpt,
    codec,
    num_frames: int,
    labels: Any = None,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    **sampling: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``num_frames`` frames of RVQ codes ``[B, num_frames, n_q]`` with a speech GPT and
    decode them with ``codec``: returns ``(codes, wav [B, C, num_frames * hop])``."""
    if gpt.code_layout.radices != codec.code_layout.radices:
        raise ValueError(
            f"GPT code layout {gpt.code_layout.radices} does not match the codec's "
            f"{codec.code_layout.radices} (a GPT trained on another codec's codes)"
        )
    codes = gpt.generate(labels, num_samples=num_samples, num_tokens=num_frames,
                         generator=generator, **sampling)
    return codes, codec.decode(codes)
