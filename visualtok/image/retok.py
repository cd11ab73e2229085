"""ReTok: a flexible 1D tokenizer (Redundant Token Padding, Hierarchical Semantic Regularization).

Fu et al., "Improving Flexible Image Tokenizers for Autoregressive Image Generation"
(arXiv:2601.01535); official code: zfu006/ReTok (``VQVitModelPlus``, configs ``VQ_SS256`` =
ReTok-S-S and ``VQ_SB256`` = ReTok-S-B, 232M, weights e.g. ``VQ_SB256_e250.pt`` on Google Drive;
no licence file, evaluation code only). The pipeline, by its paper names:

1. **CNN encoder** (LlamaGen VQGAN design, no attention): 256x256 -> 16x16 x ``z_channels``.
2. **Q-Former 2D -> 1D** (``s2to1encoder``): the grid is LayerNorm'ed and embedded (the memory);
   N = 256 queries come from **multi-level query init**: average pools of the embedded memory in
   log2(N) + 1 groups, coarse to fine (1, 1, 2, 4, ..., 128 tokens; group g pools to
   2^(l//2) rows x 2^((l+1)//2) columns, l = max(g - 1, 0)).
3. **Redundant Token Padding**: queries ``redundant_from``..N-1 (32..255) are duplicated and
   appended, so the encoder emits N + M = 480 tokens; then ``global_proj``. Layers are DETR-style
   pre-norm Q-Former layers (``nn/qformer.py``) with learned 1D query and 2D memory positions.
4. ``ln_post``, 1x1 convs to ``z_channels`` then to 8 (``quant_conv``), **l2-normalised VQ**
   16384 x 8 with the **rotation trick** (shared quantizer core). Codes ``[B, 480, 1]``.
5. **Q-Former 1D -> 2D** (``s1to2decoder``): from the first k tokens (any k in 1..480): all 256 2D
   queries start as a copy of memory token 0, plus a 2D position table; the memory's positions are
   the first k rows of the 1D tables. A 3x3 conv maps back to ``z_channels`` (``rec_spatial``).
   **Hierarchical Semantic Regularization** reads the queries after layer ``distill_depth`` (3)
   through ``distill_mlp`` (-> 768, the paper's DINOv2-B width).
6. **CNN decoder** with **adaptive GroupNorm** (conditioned on ``rec_spatial``'s per-channel mean
   and unbiased std) opening every level and depth-to-space (DCR) upsampling.

``decode(codes[:, :k])`` equals the official ``decode_code(..., num_tokens=k)``; the official
``decode(quant)`` without ``num_tokens`` uses the first 256 tokens, i.e. ``decode(codes[:, :256])``.
Images are [-1, 1] inside; users pass [0, 1]. The input size is fixed (learned position tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import (
    NonNegativeInt,
    PositiveInt,
    UnitFloat,
)
from ..nn.linear import Linear, linear
from ..nn.qformer import QFormerLayer
from ..nn.vit import ViTSizes
from ..quantize.config import QuantizerConfig, build_quantizer
from ..registry import PretrainedRecord, register_model, register_model_class
from .base import ImageTokenizer, preset_config
from .vqgan import VQGANDecoder, VQGANEncoder

__all__ = ["ReTokConfig", "ReTok", "QUERY_SIZES", "multi_level_queries", "retok_config"]

# width, depth, heads of the official Q-Former sizes
QUERY_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (256, 4, 4), "small": (512, 6, 8), "base": (768, 12, 12), "large": (1024, 24, 16),
    "xl": (1280, 36, 20), "xxl": (1536, 48, 24),
}


@dataclass
class ReTokConfig(ViTSizes):
    """Constructor arguments of ``ReTok`` (one-to-one with YAML / config.json)."""

    image_size: PositiveInt = 256  # fixed square input (hard-coded upstream)
    channels: PositiveInt = 128  # CNN base width
    # grid = image_size / 2**(levels - 1)
    encoder_ch_mult: tuple[PositiveInt, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[PositiveInt, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: PositiveInt = 2
    z_channels: PositiveInt = 256  # CNN features / Q-Former in- and output channels
    dropout: UnitFloat = 0.0
    # the Q-Formers' sizes (ViTSizes): encoder 2D -> 1D and decoder 1D -> 2D, 6 layers each
    encoder_depth: PositiveInt = 6
    decoder_depth: PositiveInt = 6
    num_latent_tokens: PositiveInt = 256  # N multi-level queries (a power of two)
    # Redundant Token Padding: queries redundant_from..N-1 repeat
    redundant_from: NonNegativeInt = 32
    # HSR: decoder layer whose output feeds distill_mlp (None: off)
    distill_depth: PositiveInt | None = 3
    distill_dim: PositiveInt = 768  # HSR teacher feature width (DINOv2-B: 768)
    quantizer: QuantizerConfig = field(
        default_factory=lambda: QuantizerConfig(
            type="vq", dim=8, codebook_size=16384, l2_normalize=True, beta=0.25,
            rotation_trick=True,
        )
    )

    @property
    def grid_size(self) -> int:
        return self.image_size // 2 ** (len(self.encoder_ch_mult) - 1)

    @property
    def total_tokens(self) -> int:
        """N + M: the multi-level queries plus the redundant copies (480 for the presets)."""
        return 2 * self.num_latent_tokens - self.redundant_from

    def validate(self) -> ReTokConfig:
        super().validate()  # ViTSizes: heads divide widths
        n, g = self.num_latent_tokens, self.grid_size
        if n < 2 or n & (n - 1):
            raise ValueError(f"num_latent_tokens must be a power of two >= 2; got {n}")
        levels = int(math.log2(n))
        rows, cols = 2 ** ((levels - 1) // 2), 2 ** (levels // 2)
        if g * 2 ** (len(self.encoder_ch_mult) - 1) != self.image_size or g % rows or g % cols:
            raise ValueError(
                f"multi-level query init of {n} tokens pools the {g}x{g} grid into up to "
                f"{rows}x{cols} blocks: image_size {self.image_size} / 2**(levels - 1) must give a "
                f"grid divisible by both"
            )
        if not 0 <= self.redundant_from < n:
            raise ValueError(f"redundant_from must be in [0, {n}); got {self.redundant_from}")
        if len(self.decoder_ch_mult) != len(self.encoder_ch_mult):
            raise ValueError("encoder_ch_mult and decoder_ch_mult must have the same length")
        if self.distill_depth is not None and not 1 <= self.distill_depth <= self.decoder_depth:
            raise ValueError(
                f"distill_depth must be in 1..decoder_depth ({self.decoder_depth}) or None; "
                f"got {self.distill_depth}"
            )
        return self


def multi_level_queries(memory: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Multi-level query init: ``[B, W, g, g]`` -> ``[B, num_tokens, W]`` average pools.

    Group ``i`` of ``log2(num_tokens) + 1`` pools to ``2**(l // 2)`` rows x ``2**((l + 1) // 2)``
    columns with ``l = max(i - 1, 0)`` (groups 0 and 1 are both the global mean), flattened
    row-major: 1, 1, 2, 4, ..., num_tokens / 2 tokens.
    """
    h, w = memory.shape[-2:]
    groups = []
    for i in range(int(math.log2(num_tokens)) + 1):
        lvl = max(i - 1, 0)
        rows, cols = 2 ** (lvl // 2), 2 ** ((lvl + 1) // 2)
        pooled = F.avg_pool2d(memory, kernel_size=(h // rows, w // cols))
        groups.append(pooled.flatten(2).transpose(1, 2))
    return torch.cat(groups, dim=1)


def _pos(rows: int, width: int) -> nn.Parameter:
    return nn.Parameter(width**-0.5 * torch.randn(rows, width))


class QueryEncoder(nn.Module):
    """Q-Former 2D -> 1D: CNN features ``[B, Z, g, g]`` -> tokens ``[B, N + M, Z]``."""

    def __init__(self, cfg: ReTokConfig) -> None:
        super().__init__()
        w, n = cfg.encoder_width, cfg.num_latent_tokens
        self.num_latent_tokens, self.redundant_from = n, cfg.redundant_from
        self.encoder_embed = Linear(cfg.z_channels, w)
        self.ln_pre = nn.LayerNorm(cfg.z_channels)
        self.positional_embedding = _pos(cfg.grid_size**2, w)  # 2D memory positions
        self.latent_token_positional_embedding = _pos(n, w)  # 1D query positions
        self.latent_token_positional_embedding_comp = _pos(n - cfg.redundant_from, w)
        self.global_proj = Linear(w, w)
        self.transformer = nn.ModuleList(
            QFormerLayer(w, cfg.encoder_heads, cfg.mlp_ratio, cfg.dropout)
            for _ in range(cfg.encoder_depth)
        )
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, cfg.z_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, _, g, _ = features.shape
        memory = self.encoder_embed(self.ln_pre(features.flatten(2).transpose(1, 2)))  # [B, L, W]
        queries = multi_level_queries(memory.transpose(1, 2).reshape(B, -1, g, g),
                                      self.num_latent_tokens)
        queries = torch.cat([queries, queries[:, self.redundant_from:]], dim=1)  # padding
        x = self.global_proj(queries)
        query_pos = torch.cat([self.latent_token_positional_embedding,
                               self.latent_token_positional_embedding_comp]).to(x.dtype)
        pos = self.positional_embedding.to(x.dtype)
        for layer in self.transformer:
            x = layer(x, memory, pos=pos, query_pos=query_pos)
        return linear(self.ln_post(x), self.conv_out.weight.flatten(1), self.conv_out.bias)


class SpatialDecoder(nn.Module):
    """Q-Former 1D -> 2D: tokens ``[B, k, Z]`` -> ``rec_spatial [B, Z, g, g]`` (+ HSR features)."""

    def __init__(self, cfg: ReTokConfig) -> None:
        super().__init__()
        w, n = cfg.decoder_width, cfg.num_latent_tokens
        self.grid_size, self.width, self.distill_depth = cfg.grid_size, w, cfg.distill_depth
        self.decoder_embed = Linear(cfg.z_channels, w)
        self.ln_pre = nn.LayerNorm(cfg.z_channels)
        self.positional_embedding = _pos(cfg.grid_size**2, w)  # 2D query positions
        self.latent_token_positional_embedding = _pos(n, w)  # 1D memory positions
        self.latent_token_positional_embedding_comp = _pos(n - cfg.redundant_from, w)
        self.transformer = nn.ModuleList(
            QFormerLayer(w, cfg.decoder_heads, cfg.mlp_ratio, cfg.dropout)
            for _ in range(cfg.decoder_depth)
        )
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, cfg.z_channels, 3, padding=1)
        if cfg.distill_depth is not None:  # HSR projection (REPA-style 3-layer MLP)
            self.distill_mlp = nn.Sequential(
                Linear(w, 4 * w), nn.SiLU(), Linear(4 * w, 4 * w), nn.SiLU(),
                Linear(4 * w, cfg.distill_dim),
            )

    def forward(self, tokens: torch.Tensor, inner: bool = False):
        """``[B, k, Z]`` -> ``rec_spatial``, or ``(rec_spatial, [B, g*g, distill_dim])``."""
        B, k, _ = tokens.shape
        memory = self.decoder_embed(self.ln_pre(tokens))  # [B, k, W]
        x = memory[:, :1].expand(B, self.grid_size**2, self.width)  # every query = token 0
        pos = torch.cat([self.latent_token_positional_embedding,
                         self.latent_token_positional_embedding_comp])[:k].to(memory.dtype)
        query_pos = self.positional_embedding.to(memory.dtype)
        feats = None
        for i, layer in enumerate(self.transformer):
            x = layer(x, memory, pos=pos, query_pos=query_pos)
            if inner and i + 1 == self.distill_depth:
                feats = self.distill_mlp(x)
        g = self.grid_size
        rec = self.conv_out(self.ln_post(x).transpose(1, 2).reshape(B, self.width, g, g))
        return (rec, feats) if inner else rec


@register_model_class
class ReTok(ImageTokenizer):
    """ReTok 1D tokenizer. See the module docstring; ``ReTok(ReTokConfig(...))``."""

    config_class = ReTokConfig
    supports_prefix = True
    keep_fp32 = ("quantizer", "quant_conv")  # bf16 trunk, fp32 codes (see ``encode_latents``)

    def __init__(self, config: ReTokConfig) -> None:
        super().__init__(config)
        c = self.config
        d = c.quantizer.dim
        self.encoder = VQGANEncoder(c.channels, tuple(c.encoder_ch_mult), c.num_res_blocks,
                                    c.z_channels, c.dropout, attention=False)
        self.s2to1encoder = QueryEncoder(c)
        self.quant_conv = nn.Conv2d(c.z_channels, d, 1)
        self.quantizer = build_quantizer(c.quantizer)
        self.post_quant_conv = nn.Conv2d(d, c.z_channels, 1)
        self.s1to2decoder = SpatialDecoder(c)
        self.decoder = VQGANDecoder(c.channels, tuple(c.decoder_ch_mult), c.num_res_blocks,
                                    c.z_channels, c.dropout, attention=False, upsample="d2s",
                                    adaptive_gn=True)

    # ------------------------------------------------------------------ description
    @property
    def token_shape(self) -> tuple[int, ...]:
        return (self.config.total_tokens,)

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images [0, 1] ``[B, 3, H, W]`` -> pre-quantizer latents ``[B, N + M, D]``."""
        x = images.to(self.encoder.conv_in.weight.dtype) * 2.0 - 1.0
        tokens = self.s2to1encoder(self.encoder(x))  # [B, N + M, Z]
        q = self.quant_conv  # in fp32 whatever the trunk's dtype: the codes come from these values
        return linear(tokens.float(), q.weight.float().flatten(1), q.bias.float())

    def decode_features(self, z_q: torch.Tensor, inner: bool = False):
        """``[B, k, D]`` -> ``rec_spatial [B, Z, g, g]`` (and, with ``inner``, the HSR features
        ``[B, g*g, distill_dim]``)."""
        n, d = self.config.total_tokens, self.config.quantizer.dim
        if z_q.ndim != 3 or z_q.shape[-1] != d or not 1 <= z_q.shape[1] <= n:
            raise ValueError(
                f"latents must be [B, k, {d}] with 1 <= k <= {n} (a prefix of the {n} tokens); "
                f"got {tuple(z_q.shape)}"
            )
        if inner and self.config.distill_depth is None:
            raise ValueError("HSR features need distill_depth (this ReTok has no distill_mlp)")
        tokens = linear(z_q, self.post_quant_conv.weight.flatten(1), self.post_quant_conv.bias)
        return self.s1to2decoder(tokens, inner=inner)

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, k, D]`` (1 <= k <= N + M) -> ``[B, 3, H, W]`` on the [0, 1] scale, not clamped."""
        return (self.decoder(self.decode_features(z_q)) + 1.0) / 2.0

    def decode_latents_and_features(self, z_q: torch.Tensor):
        """Training hook for Hierarchical Semantic Regularization: ``[B, k, D]`` -> (recon on the
        [0, 1] scale, ``distill_mlp`` features ``[B, g*g, distill_dim]``)."""
        rec, feats = self.decode_features(z_q, inner=True)
        return (self.decoder(rec) + 1.0) / 2.0, feats


# ---------------------------------------------------------------------- presets
_PAPER = ("Improving Flexible Image Tokenizers for Autoregressive Image Generation "
          "(arXiv:2601.01535)")


def retok_config(base: dict[str, Any], overrides: dict[str, Any]) -> ReTokConfig:
    """Preset ``base`` + ``overrides`` -> ``ReTokConfig`` (``preset_config``, quantizer dim 8)."""
    return preset_config(ReTokConfig, base, overrides, quantizer_dim=8)


def _sizes(enc: str, dec: str) -> dict[str, Any]:
    (ew, ed, eh), (dw, dd, dh) = QUERY_SIZES[enc], QUERY_SIZES[dec]
    return dict(encoder_width=ew, encoder_depth=ed, encoder_heads=eh,
                decoder_width=dw, decoder_depth=dd, decoder_heads=dh)


def _record(filename: str, notes: str) -> PretrainedRecord:
    """Official weights (Google Drive, no hub id): put ``filename`` in ``weights/<preset>/``."""
    return PretrainedRecord(
        filename=filename, format="retok", input_size=(256, 256), input_range="[0, 1]",
        num_tokens=480, vocab="16384 (VQ, 8-d, l2, rotation trick)", license="none stated",
        paper=_PAPER, notes=notes + "; weights: the Google Drive folder linked from the "
        "zfu006/ReTok README, placed in weights/<preset>/ (converted on load)",
    )


_VQ = dict(type="vq", dim=8, codebook_size=16384, l2_normalize=True, beta=0.25,
           rotation_trick=True)


@register_model(pretrained=_record("VQ_SS256.pt", "ReTok-S-S: Q-Formers small/small (136.4M)"))
def retok_ss(**overrides: Any) -> ReTok:
    """ReTok-S-S (``VQ_SS256``): small 2D->1D and 1D->2D Q-Formers, 480 tokens, VQ 16384x8."""
    return ReTok(retok_config(dict(_sizes("small", "small"), quantizer=_VQ), overrides))


@register_model(pretrained=_record("VQ_SB256_e250.pt", "ReTok-S-B: rFID 1.01, gFID 2.27 (232.8M)"))
def retok_sb(**overrides: Any) -> ReTok:
    """ReTok-S-B (``VQ_SB256``): small 2D->1D and base 1D->2D Q-Formers, 480 tokens."""
    return ReTok(retok_config(dict(_sizes("small", "base"), quantizer=_VQ), overrides))


@register_model
def retok_tiny(**overrides: Any) -> ReTok:
    """CPU-trainable ReTok: 64x64, f8 (8x8 grid), 32 channels, 64-wide Q-Formers, 32 + 24 tokens,
    VQ 1024x8 l2 + rotation trick with k-means init and dead-code restart."""
    base = dict(image_size=64, channels=32, encoder_ch_mult=(1, 1, 2, 2),
                decoder_ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32,
                encoder_width=64, encoder_depth=2, encoder_heads=4, decoder_width=64,
                decoder_depth=2, decoder_heads=4, num_latent_tokens=32, redundant_from=8,
                distill_depth=1, distill_dim=64,
                quantizer=dict(_VQ, codebook_size=1024, kmeans_init=True,
                               dead_code_threshold=0.1))
    return ReTok(retok_config(base, overrides))
