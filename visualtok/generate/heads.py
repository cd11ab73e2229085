"""Generator input embeddings and output heads for every ``CodeLayout`` (DESIGN.md §4, §6).

A token's code is ``F`` factors with radices ``layout.radices``. Heads turn the GPT state
``h: [M, D]`` (``M`` tokens) into a distribution over codes ``[M, F]``:

* ``flat``: one softmax over the flat vocabulary (``layout.flat_vocab``, small vocabularies);
* ``factor``: per-factor causal head (TokenBridge): factor ``f`` is predicted from ``h`` and the
  factors ``< f`` in a fixed order by a small causal transformer over the ``F`` factor positions;
* ``factor_independent``: the same net without the previous factors, i.e. independent softmaxes
  (the baseline the causal head beats on correlated factors);
* ``bit``: independent Bernoulli per bit, for binary codes of any width (radices powers of two).

Every head has ``nll(h, codes) -> [M]`` (nats per token, summed over factors) and
``sample(h, h_uncond, scale, config, generator) -> (codes [M, F], logprob [M])`` where CFG is
applied to the logits of each factor / bit. Output projections are zero-initialised.

Inputs (``CodeEmbedding``): a learned embedding of flat ids, per-factor embeddings summed, or
embedding-free ``quantizer.features(codes)`` projected by a Linear.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.attention import rotary_tables
from ..nn.linear import Linear
from ..quantize.bits import BitPacker
from ..quantize.layout import CodeLayout
from .blocks import Block, RMSNorm, ffn_hidden_dim
from .sampling import SamplingConfig, apply_cfg, sample_from_logits

__all__ = [
    "HEAD_TYPES",
    "INPUT_TYPES",
    "MAX_FLAT_VOCAB",
    "resolve_head",
    "resolve_input",
    "build_head",
    "CodeEmbedding",
    "FlatHead",
    "FactorHead",
    "BitHead",
]

HEAD_TYPES = ("flat", "factor", "factor_independent", "bit")
INPUT_TYPES = ("embedding", "factor_embedding", "features")
MAX_FLAT_VOCAB = 2**18  # above this a flat softmax / embedding table is not worth its memory


def _is_pow2(r: int) -> bool:
    return r & (r - 1) == 0


def _fits_flat(layout: CodeLayout) -> bool:
    """Whether a flat softmax / embedding table over ``layout.flat_vocab`` is affordable."""
    return layout.flat_vocab is not None and layout.flat_vocab <= MAX_FLAT_VOCAB


def _check_choice(value: str, choices: tuple[str, ...], field: str) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be 'auto' or one of {choices}; got {value!r}")


def _require_flat(layout: CodeLayout, what: str, instead: str) -> None:
    """``ValueError`` unless ``layout`` has a flat vocabulary small enough for ``what``."""
    if not _fits_flat(layout):
        raise ValueError(
            f"{what} does not support code layout {layout.radices} "
            f"({layout.bits_per_token:.0f} bits per token; flat softmax limit {MAX_FLAT_VOCAB}): "
            f"use {instead}"
        )


def resolve_head(head: str, layout: CodeLayout) -> str:
    """``auto`` -> ``flat`` for small flat vocabularies, else ``factor``; validate the choice."""
    if head == "auto":
        return "flat" if _fits_flat(layout) else "factor"
    _check_choice(head, HEAD_TYPES, "head")
    if head == "flat":
        _require_flat(layout, "the flat head", "head='factor' or head='bit'")
    if head == "bit" and not all(_is_pow2(r) for r in layout.radices):
        raise ValueError(
            f"the bit head needs binary codes (every radix a power of two); "
            f"got radices {layout.radices}: use head='factor'"
        )
    return head


def resolve_input(kind: str, head: str, layout: CodeLayout) -> str:
    """``auto`` -> ``embedding`` with the flat head, else ``factor_embedding``."""
    if kind == "auto":
        return "embedding" if head == "flat" else "factor_embedding"
    _check_choice(kind, INPUT_TYPES, "input")
    if kind == "embedding":
        _require_flat(layout, "a flat input embedding", "input='factor_embedding' or 'features'")
    return kind


def _offsets(layout: CodeLayout) -> torch.Tensor:
    return torch.tensor([0, *layout.radices[:-1]], dtype=torch.long).cumsum(0)


class CodeEmbedding(nn.Module):
    """Codes ``[B, L, F]`` -> ``[B, L, D]``: flat, summed per-factor, or projected features."""

    def __init__(self, kind: str, layout: CodeLayout, dim: int, feature_dim: int = 0) -> None:
        super().__init__()
        self.kind, self.layout = kind, layout
        self.features_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # bound at runtime
        if kind == "embedding":
            self.embedding = nn.Embedding(layout.flat_vocab, dim)
        elif kind == "factor_embedding":
            self.embedding = nn.Embedding(sum(layout.radices), dim)
            self.register_buffer("offsets", _offsets(layout), persistent=False)
        else:
            if feature_dim < 1:
                raise ValueError(
                    "input='features' needs feature_dim (the width of quantizer.features)"
                )
            self.proj = Linear(feature_dim, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.kind == "embedding":
            return self.embedding(self.layout.to_ids(codes))
        if self.kind == "factor_embedding":
            return self.embedding(codes + self.offsets).sum(-2)
        if self.features_fn is None:
            raise ValueError(
                "input='features' needs a quantizer: call gpt.bind_quantizer(quantizer) first"
            )
        return self.proj(self.features_fn(codes).to(self.proj.weight.dtype))


class FlatHead(nn.Module):
    """One softmax over the flat vocabulary; ``logits [M, V]`` from ``h [M, D]``."""

    def __init__(self, dim: int, layout: CodeLayout) -> None:
        super().__init__()
        self.layout = layout
        self.output = Linear(dim, layout.flat_vocab, bias=False)
        nn.init.zeros_(self.output.weight)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h).float()

    def nll(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(h), self.layout.to_ids(codes), reduction="none")

    def sample(self, h, h_uncond, scale, config: SamplingConfig, generator=None):
        if h_uncond is None:
            logits = self.logits(h)
        else:  # one GEMM over [cond; uncond] rows: the wide output layer is read once
            logits, uncond = self.logits(torch.cat([h, h_uncond])).split(h.shape[0])
            logits = apply_cfg(logits, uncond, scale)
        ids, logprob = sample_from_logits(logits, config, generator)
        return self.layout.from_ids(ids), logprob


class FactorHead(nn.Module):
    """Causal over factors: ``p(c) = prod_f p(c_f | h, c_<f)``; else independent."""

    def __init__(
        self,
        dim: int,
        layout: CodeLayout,
        width: int = 256,
        depth: int = 2,
        num_heads: int = 4,
        autoregressive: bool = True,
    ) -> None:
        super().__init__()
        self.layout, self.autoregressive = layout, autoregressive
        nf, rmax = layout.num_factors, layout.max_radix
        self.in_proj = Linear(dim, width)
        self.factor_pos = nn.Parameter(torch.randn(nf, width) * 0.02)
        if autoregressive:
            self.code_embedding = nn.Embedding(sum(layout.radices), width)
            self.register_buffer("offsets", _offsets(layout), persistent=False)
        self.blocks = nn.ModuleList(
            Block(width, num_heads, ffn_hidden_dim(width, 64)) for _ in range(depth)
        )
        self.norm = RMSNorm(width)
        self.out_weight = nn.Parameter(torch.zeros(nf, width, rmax))
        self.out_bias = nn.Parameter(torch.zeros(nf, rmax))
        valid = torch.arange(rmax)[None, :] < layout.radix_tensor()[:, None]
        self.register_buffer("invalid", ~valid, persistent=False)  # [F, Rmax]
        cos, sin = rotary_tables(torch.arange(nf), width // num_heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def logits(self, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """``h [M, D]``, ``prev [M, L-1]`` codes of factors ``< L-1`` -> logits ``[M, L, Rmax]``."""
        L = prev.shape[1] + 1
        x = self.in_proj(h)[:, None, :] + self.factor_pos[:L]
        if self.autoregressive and L > 1:
            x = x + F.pad(self.code_embedding(prev + self.offsets[: L - 1]), (0, 0, 1, 0))
        rot = (self.cos[:L], self.sin[:L])
        for blk in self.blocks:
            x = blk(x, rotary=rot, is_causal=True)
        x = self.norm(x).float()
        out = (
            torch.einsum("mlw,lwr->mlr", x, self.out_weight[:L].float()) + self.out_bias[:L].float()
        )
        return out.masked_fill(self.invalid[:L], float("-inf"))

    def nll(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        logits = self.logits(h, codes[:, :-1])  # [M, F, Rmax]
        logp = logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)
        return -logp.sum(-1)

    def sample(self, h, h_uncond, scale, config: SamplingConfig, generator=None, banned=None):
        """``banned [F, Rmax]`` (optional, True = not allowed): symbols excluded per factor."""
        M, nf = h.shape[0], self.layout.num_factors
        codes = torch.zeros(M, 0, dtype=torch.long, device=h.device)
        total = torch.zeros(M, device=h.device)
        for f in range(nf):
            logits = self.logits(h, codes)[:, f]
            if h_uncond is not None:
                logits = apply_cfg(logits, self.logits(h_uncond, codes)[:, f], scale)
            if banned is not None:
                logits = logits.masked_fill(banned[f], float("-inf"))
            c, lp = sample_from_logits(logits, config, generator)
            codes, total = torch.cat([codes, c[:, None]], 1), total + lp
        return codes, total


class BitHead(nn.Module):
    """Independent Bernoulli per bit (little-endian bits of each factor, factors in order)."""

    def __init__(self, dim: int, layout: CodeLayout) -> None:
        super().__init__()
        self.layout = layout
        self.bits = BitPacker([r.bit_length() - 1 for r in layout.radices])
        self.num_bits = self.bits.num_bits
        self.output = Linear(dim, self.num_bits)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def to_bits(self, codes: torch.Tensor) -> torch.Tensor:
        """``[M, F]`` codes -> ``[M, num_bits]`` {0, 1}."""
        return self.bits.unpack(codes)

    def from_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """``[M, num_bits]`` bits -> ``[M, F]`` codes."""
        return self.bits.pack(bits)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(h).float()

    def nll(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        target = self.to_bits(codes).float()
        return F.binary_cross_entropy_with_logits(self.logits(h), target, reduction="none").sum(-1)

    def sample(self, h, h_uncond, scale, config: SamplingConfig, generator=None):
        if config.top_k or config.top_p < 1.0:
            raise ValueError(
                "the bit head samples each bit independently: top_k / top_p do not apply "
                "(use temperature)"
            )
        logits = self.logits(h)
        if h_uncond is not None:
            logits = apply_cfg(logits, self.logits(h_uncond), scale)
        if config.temperature == 0:
            bits = logits > 0
        else:
            logits = logits / config.temperature
            u = torch.rand(logits.shape, generator=generator, device=logits.device)
            bits = u < torch.sigmoid(logits)
        logprob = -F.binary_cross_entropy_with_logits(logits, bits.float(), reduction="none").sum(
            -1
        )
        return self.from_bits(bits), logprob


def build_head(
    kind: str, dim: int, layout: CodeLayout, width: int = 256, depth: int = 2, num_heads: int = 4
) -> nn.Module:
    if kind == "flat":
        return FlatHead(dim, layout)
    if kind == "bit":
        return BitHead(dim, layout)
    return FactorHead(dim, layout, width, depth, num_heads, autoregressive=kind == "factor")
