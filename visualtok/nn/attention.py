"""The one multi-head attention block of visualtok (fused qkv, ``scaled_dot_product_attention``).

Every transformer in the library (TiTok's ViT, Q-Formers, the GPT generator) uses ``Attention``.
Options cover what the official models need: biases or not, QK-norm, a custom softmax scale
(FlexTok's muP ``8/head_dim``), rotary position embeddings and a static KV cache for decoding, and
cross-attention with DETR-style positional terms (ReTok's Q-Formers): queries from ``x``, keys and
values from ``context``, with ``q_pos`` added to the query input and ``k_pos`` to the key input only
(values never see positions), as ``nn.MultiheadAttention(x + q_pos, ctx + k_pos, ctx)`` computes.
The attention itself is :func:`attend` (SDPA, except a per-head route for CPU bf16 inference).

Shapes: ``x: [B, L, D]``, ``context: [B, S, D]``; ``attn_mask`` is a bool ``[L, S]`` /
``[B, 1|H, L, S]`` mask (True = may attend) or an additive float mask, as SDPA takes it.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear, linear

__all__ = ["Attention", "KVCache", "apply_rotary", "attend", "rotary_tables"]


class KVCache(nn.Module):
    """Static key/value buffers ``[B, H, max_len, head_dim]`` written in place.

    In-place writes keep the shapes static (``torch.compile``-friendly).
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, num_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(
        self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v: [B, H, L, hd]`` at ``positions: [L]``; return the full buffers."""
        self.k.index_copy_(2, positions, k.to(self.k.dtype))
        self.v.index_copy_(2, positions, v.to(self.v.dtype))
        return self.k, self.v


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[L, head_dim/2]`` for rotary embeddings at integer ``positions``."""
    inv_freq = 1.0 / (
        base
        ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    )
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(x0, x1)`` of ``x: [..., hd]`` to
    ``(x0 cos - x1 sin, x0 sin + x1 cos)``; ``cos/sin`` broadcast to ``[..., hd/2]`` (``[L, hd/2]``
    for ``x: [B, H, L, hd]``). The math runs in fp32.
    """
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


# CPU bf16 attention per head (see ``attend``): the largest per-head score matrix it makes
PER_HEAD_MAX_SCORES = 1 << 20  # L * S, i.e. 4 MiB of fp32 scores
PER_HEAD_GROUP = 2  # (batch, head) pairs per bmm: few ops per call, scores still cache-sized
# the largest known bound on |scores| at which ``Attention`` takes them from a bf16 GEMM
BF16_SCORES_MAX_BOUND = 8.0
_bias_cache: list = []  # [(weakref to a mask, its version, dtype, its bias or None)]


def _per_head_applies(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask, is_causal: bool
) -> bool:
    """Whether ``attend`` takes the per-head route (CPU bf16 inference; docstring of ``attend``)."""
    if q.device.type != "cpu" or not q.dtype == k.dtype == v.dtype == torch.bfloat16:
        return False
    if is_causal or q.dim() != 4:
        return False
    if attn_mask is not None and (attn_mask.dtype != torch.bool or attn_mask.dim() > 4
                                  or attn_mask.device.type != "cpu"):
        return False
    if q.shape[-2] * k.shape[-2] > PER_HEAD_MAX_SCORES:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not torch._C._cpu._is_amx_tile_supported()


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """The additive form of a bool mask (0 where True, -inf where False) in ``dtype``, or None
    where some query row may attend to nothing (SDPA's zeros there; a softmax would give NaN).
    Kept for the last mask seen (same tensor, unchanged): a model passes one mask to all blocks."""
    if _bias_cache:
        ref, version, dt, bias = _bias_cache[0]
        if ref() is mask and version == mask._version and dt == dtype:
            return bias
    bias = None
    if bool(mask.any(-1).all()):
        bias = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))
    _bias_cache[:] = [(weakref.ref(mask), mask._version, dtype, bias)]
    return bias


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    bf16_scores: bool = False,
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` for ``q: [B, H, L, hd]``, ``k, v: [B, H, S, hd]``, as SDPA.

    Every call goes to ``F.scaled_dot_product_attention`` except CPU bf16 inference (e.g. a ViT
    under ``torch.autocast("cpu", dtype=torch.bfloat16)``) without ``is_causal``, on CPUs without
    AMX, with at most ``PER_HEAD_MAX_SCORES`` scores per head and no mask or a bool one (any shape
    that broadcasts to ``[B, H, L, S]``) in which every query row may attend somewhere. There it
    runs per (batch, head), in groups of ``PER_HEAD_GROUP``: the fp32 scores of the bf16 ``q, k``
    (what the flash kernel accumulates), an fp32 softmax, then one bf16 GEMM with ``v`` (fp32
    accumulation, one rounding of the output). A mask enters as an additive 0 / -inf bias that
    the scores' GEMM adds to its accumulator (``baddbmm``): masked probabilities are exactly 0.
    Why: PyTorch's CPU flash kernel is no faster in bf16 than in fp32 without AMX (one
    ``[4, 8, 385, 64]`` call, 1 thread: 21.6 ms bf16, 19.4 ms fp32, on an AVX512-BF16 EPYC), while
    the bf16 GEMM of ``p @ v`` runs at the bf16 rate. Inside TiTok-S-128's bf16 encode (batch 4,
    8 such calls, one process, interleaved, CPU time) that is 0.526 s per encode against 0.550 s
    with flash (one head per bmm: 0.547 s), same codes. Scores stay fp32 by default: rounding them
    to bf16 (a bf16 ``q @ k^T``) was faster still (0.497 s against flash's 0.552 s in one run) but
    has 5x flash's error against a float64 reference and changed 0.4% more of TiTok's VQ codes.
    This route's error is flash's at TiTok's diffuse attention (4.455e-4 against 4.453e-4 mean
    against float64, and the same codes); with peaked attention, rounding the normalised
    probabilities to bf16 costs up to ~1.4x flash's mean error (flash rounds the unnormalised
    ``exp(s - max)``, whose largest term is exact, and divides in fp32).

    ``bf16_scores=True`` (this route only) takes the scores from one bf16 GEMM (the scale and the
    mask applied to its fp32 accumulator, then one rounding to bf16) and runs the softmax in bf16
    (fp32 inside): both GEMMs then run at the bf16 rate. ``Attention`` asks for it where its
    QK-norm bounds the scores by ``BF16_SCORES_MAX_BOUND`` (FlexTok: ``|s| <= 8``), so rounding
    moves each score by at most ``2**-5``. FlexTok d12's ``[2, 12, 512, 64]`` attention, 1 thread:
    12.9 ms against 18.7 ms with fp32 scores and 22.7 ms for the flash kernel (13.5 / 18.9 /
    23.3 ms with its causal-last mask), at 1.9x flash's mean error against float64 (2.3e-4 vs
    1.2e-4; fp32 scores: 1.3e-4).
    """
    if not _per_head_applies(q, k, v, attn_mask, is_causal):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale
        )
    B, H, L, hd = q.shape
    S = k.shape[-2]
    scale = hd**-0.5 if scale is None else scale
    score_dtype = torch.bfloat16 if bf16_scores else torch.float32
    bias = None
    if attn_mask is not None:
        bias = _mask_bias(attn_mask, score_dtype)
        if bias is None:  # a query row that attends to nothing: SDPA's zeros
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        bias = bias.expand(B, H, L, S)  # a view; SDPA's broadcasting
    with torch.autocast("cpu", enabled=False):  # autocast would run the fp32 bmm in bf16
        # bf16 scores: the scale goes to the GEMM's fp32 accumulator (no rounding of q * scale)
        qs, alpha = (q, scale) if bf16_scores else (q.float() * scale, 1.0)
        kt, vs = k.to(score_dtype).transpose(2, 3), v.contiguous()
        out = q.new_empty(B, H, L, hd)
        n = PER_HEAD_GROUP
        for b in range(B):
            for h in range(0, H, n):
                qi, ki = qs[b, h : h + n], kt[b, h : h + n]
                if bias is not None:
                    s = torch.baddbmm(bias[b, h : h + n], qi, ki, alpha=alpha)
                elif bf16_scores:
                    s = torch.baddbmm(qi.new_empty(()), qi, ki, beta=0, alpha=alpha)
                else:
                    s = torch.bmm(qi, ki)
                p = s.softmax(-1).to(torch.bfloat16)
                torch.bmm(p, vs[b, h : h + n], out=out[b, h : h + n])
    return out


class Attention(nn.Module):
    """Multi-head self/cross attention with a fused ``qkv`` projection and SDPA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = scale  # None -> SDPA default 1/sqrt(head_dim)
        # QK-norm (non-affine LayerNorm) keeps |q|, |k| <= sqrt(head_dim): |scores| <= that bound
        bound = abs(self.head_dim**-0.5 if scale is None else scale) * self.head_dim
        self.bf16_scores = qk_norm and bound <= BF16_SCORES_MAX_BOUND  # see ``attend``
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim, bias=proj_bias)
        self.q_norm = (
            nn.LayerNorm(self.head_dim, elementwise_affine=False) if qk_norm else nn.Identity()
        )
        self.k_norm = (
            nn.LayerNorm(self.head_dim, elementwise_affine=False) if qk_norm else nn.Identity()
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        cache_positions: torch.Tensor | None = None,
        kv_length: int | None = None,
        context: torch.Tensor | None = None,
        q_pos: torch.Tensor | None = None,
        k_pos: torch.Tensor | None = None,
        query_rows: slice | None = None,
    ) -> torch.Tensor:
        """``x: [B, L, D]`` -> ``[B, L, D]``; keys/values from ``context`` (default ``x``).

        With a ``kv_cache``, ``kv_length`` (optional) attends to the first ``kv_length`` cache
        positions only (the written prefix; ``attn_mask`` is then ``[L, kv_length]``) instead of the
        whole static buffer. ``query_rows`` (self-attention only) returns the outputs of those rows
        of ``x`` only, ``[B, len(rows), D]``, with keys and values still from all of ``x``: exactly
        those rows of the full result, without the attention and output projection of the rest
        (a ViT whose last block feeds only some tokens onward; ``attn_mask`` stays ``[.., L, L]``).
        """
        B, L, D = x.shape
        if query_rows is not None and (
            context is not None or q_pos is not None or k_pos is not None or rotary is not None
            or kv_cache is not None or is_causal
        ):
            raise ValueError("query_rows is for plain self-attention (no context, q_pos, k_pos, "
                             "rotary, kv_cache or is_causal)")
        rotate_fused = rotary is not None and isinstance(self.q_norm, nn.Identity)
        if context is None and q_pos is None and k_pos is None:
            qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim)
            if rotate_fused:  # q and k in one call: [B, L, 2, H, hd] against [L, 1, 1, hd/2]
                cos, sin = (t[:, None, None] for t in rotary)
                q, k = apply_rotary(qkv[:, :, :2], cos, sin).permute(2, 0, 3, 1, 4)
                v = qkv[:, :, 2].transpose(1, 2)
            else:
                q, k, v = qkv.permute(2, 0, 3, 1, 4)
            if query_rows is not None:
                q = q[:, :, query_rows]
                L = q.shape[2]
                if attn_mask is not None:
                    attn_mask = attn_mask[..., query_rows, :]
        else:
            if rotary is not None or kv_cache is not None:
                raise ValueError("context / q_pos / k_pos do not combine with rotary or kv_cache")
            q, k, v = self._project_separately(x, context, q_pos, k_pos)
        q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None and not rotate_fused:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv_cache is not None:
            if cache_positions is None:
                raise ValueError("cache_positions are required with a kv_cache")
            k, v = kv_cache.update(cache_positions, k, v)
            if kv_length is not None:
                k, v = k[:, :, :kv_length], v[:, :, :kv_length]
            k, v = k.to(q.dtype), v.to(q.dtype)
        out = attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                     bf16_scores=self.bf16_scores)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))

    def _project_separately(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None,
        q_pos: torch.Tensor | None,
        k_pos: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[B, H, L|S, hd]`` from three inputs, through the rows of the fused ``qkv``."""
        B, L, D = x.shape
        kv = x if context is None else context
        if kv.ndim != 3 or kv.shape[0] != B or kv.shape[2] != D:
            raise ValueError(f"context must be [B, S, {D}] with B={B}; got {tuple(kv.shape)}")
        w, b = self.qkv.weight, self.qkv.bias
        rows = [slice(0, D), slice(D, 2 * D), slice(2 * D, 3 * D)]
        inputs = (x if q_pos is None else x + q_pos, kv if k_pos is None else kv + k_pos, kv)
        out = []
        for r, inp in zip(rows, inputs):
            y = linear(inp, w[r], None if b is None else b[r])
            out.append(y.view(B, inp.shape[1], self.num_heads, self.head_dim).transpose(1, 2))
        return out[0], out[1], out[2]
