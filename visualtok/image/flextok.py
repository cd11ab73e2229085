"""FlexTok: flexible-length 1D tokens over VAE latents, decoded by a rectified-flow transformer.

Bachmann et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length"
(ICML 2025, arXiv:2502.13967); official code apple/ml-flextok (Apple sample-code licence, weights
research-only): ``EPFL-VILAB/flextok_d12_d12_in1k``, ``..._d18_d18_in1k``, ``..._d18_d28_in1k`` and
``..._d18_d28_dfn``, on the 16-channel f8 VAE ``EPFL-VILAB/flextok_vae_c16``.

Images in [-1, 1] go through a frozen KL VAE (diffusers ``AutoencoderKL``, latents times its scaling
factor). The **encoder** embeds 2x2 patches of the latents (channels-last, patch vector ordered
(py, px, c)), adds a fixed 2D sin-cos table and appends N learned **registers**; the
``causal_last`` mask lets patches see all patches and register i see all patches and registers
0..i, so the first k registers do not depend on the later ones. The trunk (width 64*depth, head dim
64) is pre-norm with non-affine fp32 LayerNorms, QK-norm, muP attention scale 8/head_dim, SwiGLU and
no biases. A zero-initialised linear head after a non-affine LayerNorm maps registers to 6 dims,
quantized by FSQ [8, 8, 8, 5, 5, 5] (64,000 codes).

The **decoder** is a rectified-flow transformer: it predicts the velocity ``v = noise - x0`` of the
noised latents ``x_t = t * noise + (1 - t) * x0`` from their 2x2 patches (sin-cos positions) and
the registers (linear 6 -> width, learned positions). **Nested dropout** overwrites registers k..N-1
with one learned mask token (k ~ U{1..N} or powers of two in training; the prefix length at
decode). Its blocks are adaLN-zero, modulated by a timestep embedding, with separate modulations
for the patch and register sub-sequences (``adaLN_expansion`` 2); the chunk order is gate_msa,
gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp. For classifier-free guidance the registers are
replaced by a null condition. **Sampling** is Euler from t = 1 to 0 (x <- x - v / T), with CFG or
adaptive projected guidance (APG, Sadat et al. 2024: momentum -0.5, norm threshold 2.5, eta 0).
The paper's defaults are 20 steps, guidance 7.5 with APG.

The wiring of the released decoder lives only in the checkpoints' ``config.json``; the options it
can set are fields of ``FlexTokConfig`` and ``visualtok.convert.flextok`` maps a wiring onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import (
    Config,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Radix,
    Range,
    UnitFloat,
)
from ..nn.attention import Attention
from ..nn.linear import Linear
from ..nn.mlp import SwiGLU
from ..quantize.base import QuantOutput
from ..quantize.config import QuantizerConfig, build_quantizer
from ..registry import PretrainedRecord, register_model, register_model_class
from .base import ImageTokenizer, TokenizerOutput, check_images

__all__ = [
    "FlexTokConfig",
    "FlexTok",
    "FlexTokEncoder",
    "FlexTokDecoder",
    "FlexBlock",
    "causal_last_mask",
    "sincos_2d",
    "timestep_embedding",
    "FLEXTOK_VAE_CONFIG",
]

# The official VAE architecture (SDXL-like KL VAE, f8); ``latent_channels`` and ``scaling_factor``
# come from the checkpoint.
FLEXTOK_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 1.0,
}



@dataclass
class FlexTokConfig(Config):
    """Constructor arguments of ``FlexTok`` (one-to-one with YAML / config.json)."""

    image_size: PositiveInt = 256  # square input side H = W
    # --- VAE (diffusers AutoencoderKL)
    vae: dict[str, Any] = field(default_factory=lambda: dict(FLEXTOK_VAE_CONFIG))
    # latents = sample * this; None: vae["scaling_factor"]
    vae_scaling_factor: PositiveFloat | None = None
    vae_frozen: bool = True  # the released VAE is trained separately and frozen
    vae_sample_posterior: bool = True  # training: sample the posterior (eval always uses its mean)
    # --- token grid
    latent_channels: PositiveInt = 16
    patch_size: PositiveInt = 2  # latent patches p x p
    num_registers: PositiveInt = 256  # N 1D tokens
    # FSQ levels (64,000 codes)
    levels: Annotated[tuple[Radix, ...], Range(ge=1)] = (8, 8, 8, 5, 5, 5)
    posemb_grid: PositiveInt = 16  # side of the sin-cos tables (cropped top-left to the patch grid)
    # --- trunks
    encoder_dim: PositiveInt = 768
    encoder_depth: PositiveInt = 12
    decoder_dim: PositiveInt = 768
    decoder_depth: PositiveInt = 12
    head_dim: PositiveInt = 64
    mlp_ratio: PositiveFloat = 4.0  # SwiGLU hidden = int(2 * int(dim * mlp_ratio) / 3)
    # --- decoder wiring (read from the official config.json by the converter)
    register_posemb: bool = True  # learned position table added to the decoder's registers
    # CFG null registers: "learned" token or "zero"
    null_condition: Literal["learned", "zero"] = "learned"
    adaln_expansion: Literal[1, 2] = 2  # 2: separate adaLN for patches and registers; 1: shared
    head_adaln: bool = True  # adaLN (shift, scale) from the timestep embedding in the output head
    # timestep-embedding frequencies scaled by 1000 / max_timestep
    max_timestep: Annotated[float, Range(ge=1)] = 1.0
    frequency_embedding_size: PositiveInt = 256
    zero_init: bool = True  # official init: zero encoder head, decoder head and adaLN (adaLN-zero)
    # --- training
    # nested dropout k: uniform | pow2 | uniform_pow2
    keep_sampling: Literal["uniform", "pow2", "uniform_pow2"] = "uniform"
    cfg_dropout: UnitFloat = 0.1  # probability of training a sample with the null condition
    logit_normal: bool = True  # t = sigmoid(N(0, 1)) (minRF), else t ~ U(0, 1)
    # --- sampling defaults (the paper's)
    steps: PositiveInt = 20
    guidance_scale: NonNegativeFloat = 7.5
    apg: bool = True  # adaptive projected guidance instead of plain CFG

    def validate(self) -> FlexTokConfig:
        super().validate()
        for name in ("encoder_dim", "decoder_dim"):
            d = getattr(self, name)
            if d % self.head_dim or d % 4:
                raise ValueError(
                    f"FlexTokConfig.{name} {d} must be a multiple of head_dim {self.head_dim} "
                    "and of 4 (sin-cos table)"
                )
        vae_ch = self.vae.get("latent_channels")
        if vae_ch != self.latent_channels:
            raise ValueError(
                f"the VAE's latent_channels ({vae_ch}) must equal the tokenizer's latent_channels "
                f"({self.latent_channels})"
            )
        if self.keep_sampling != "uniform" and self.num_registers & (self.num_registers - 1):
            raise ValueError(f"keep_sampling {self.keep_sampling!r} needs a power-of-two "
                             f"num_registers; got {self.num_registers}")
        return self

    @property
    def latent_size(self) -> int:
        """Side of the VAE latent grid (image_size / VAE downsampling)."""
        return self.image_size // _vae_factor(self.vae)


def _vae_factor(vae: dict[str, Any]) -> int:
    return 2 ** (len(vae.get("down_block_types", FLEXTOK_VAE_CONFIG["down_block_types"])) - 1)


# ---------------------------------------------------------------------- building blocks
def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """FlexTok's fixed 2D table ``[1, dim, h, w]``: channels [sin, cos] of the row index, then
    [sin, cos] of the column index, frequencies ``1 / temperature^(i / (dim/4))``."""
    if dim % 4:
        raise ValueError(f"sin-cos position tables need dim divisible by 4; got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    rows = torch.arange(h, dtype=torch.float32)[:, None] * omega  # [h, D/4]
    cols = torch.arange(w, dtype=torch.float32)[:, None] * omega  # [w, D/4]
    r = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(h, w, dim // 2)
    c = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([r, c], dim=-1).permute(2, 0, 1)[None].contiguous()


def timestep_embedding(t: torch.Tensor, dim: int, max_timestep: float = 1.0,
                       max_period: float = 256.0) -> torch.Tensor:
    """``t: [B]`` in [0, max_timestep] -> ``[B, dim]`` = [cos, sin] of ``t * f_i`` (fp32),
    ``f_i = 1000 / max_timestep * max_period^(-i / (dim/2))``."""
    half = dim // 2
    freqs = (1000.0 / max_timestep) * torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


def causal_last_mask(num_patches: int, num_registers: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``[P+R, P+R]`` (True = may attend): patches see all patches and no register;
    register i sees every patch and registers 0..i."""
    n = num_patches + num_registers
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    return (k < num_patches) | ((q >= num_patches) & (k <= q))


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Non-affine LayerNorm computed in fp32 (eps 1e-5), in the input dtype. For bf16/fp16 inputs
    PyTorch's kernel already accumulates in fp32, so no fp32 copy of ``x`` is made."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return F.layer_norm(x, x.shape[-1:], eps=1e-5)
    return F.layer_norm(x.float(), x.shape[-1:], eps=1e-5).to(x.dtype)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> channels-last patches ``[B, H/p, W/p, p*p*C]`` ordered (py, px, c)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, H // p, W // p, p * p * C)


def unpatchify(x: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Inverse of ``patchify``: ``[B, h, w, p*p*C]`` -> ``[B, C, h*p, w*p]``."""
    B, h, w, _ = x.shape
    x = x.reshape(B, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, h * p, w * p)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale) + shift


def _per_segment(fn, segments: tuple[int, ...] | None, x: torch.Tensor,
                 *others: torch.Tensor) -> torch.Tensor:
    """``fn(i, x[:, seg_i], *others[:, seg_i])`` written into one output, segment by segment
    (the per-segment adaLN parameters broadcast without expanding them over the sequence)."""
    if segments is None:
        return fn(0, x, *others)
    out, start = torch.empty_like(x), 0
    for i, n in enumerate(segments):
        out[:, start : start + n] = fn(i, x[:, start : start + n],
                                       *(o[:, start : start + n] for o in others))
        start += n
    return out


class FlexBlock(nn.Module):
    """Pre-norm block ``[B, L, D] -> [B, L, D]``; with ``adaln_expansion`` > 0 it is adaLN-zero.

    ``segments`` (adaLN only) gives the lengths of the sub-sequences that get their own modulation
    (patches, registers) when the expansion is 2.
    """

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float = 4.0,
                 adaln_expansion: int = 0) -> None:
        super().__init__()
        self.attn = Attention(dim, dim // head_dim, qkv_bias=False, proj_bias=False,
                              qk_norm=True, scale=8.0 / head_dim)
        self.mlp = SwiGLU(dim, int(2 * int(dim * mlp_ratio) / 3))
        self.adaln_expansion = adaln_expansion
        if adaln_expansion:
            self.modulation = Linear(dim, adaln_expansion * 6 * dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                emb: torch.Tensor | None = None,
                segments: tuple[int, ...] | None = None) -> torch.Tensor:
        if not self.adaln_expansion:
            x = x + self.attn(_layer_norm(x), attn_mask=attn_mask)
            return x + self.mlp(_layer_norm(x))
        B, D = x.shape[0], x.shape[-1]
        # [B, E, 1, 6D]: one set per segment (E = 2: patches, registers); E = 1 broadcasts
        mod = self.modulation(F.silu(emb)).view(B, self.adaln_expansion, 1, 6 * D)
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = mod.chunk(6, dim=-1)
        seg = segments if self.adaln_expansion == 2 else None

        def pre(i, y, shift=shift_msa, scale=scale_msa):
            return _modulate(y, shift[:, i], scale[:, i])

        def res(gate):
            return lambda i, y, h: y + gate[:, i] * h

        h = self.attn(_per_segment(pre, seg, _layer_norm(x)), attn_mask=attn_mask)
        x = _per_segment(res(gate_msa), seg, x, h)
        h = self.mlp(_per_segment(lambda i, y: pre(i, y, shift_mlp, scale_mlp), seg,
                                  _layer_norm(x)))
        return _per_segment(res(gate_mlp), seg, x, h)


class FlexTokEncoder(nn.Module):
    """Scaled VAE latents ``[B, C, H, W]`` -> register latents ``[B, k, len(levels)]``."""

    def __init__(self, cfg: FlexTokConfig) -> None:
        super().__init__()
        d, p, c = cfg.encoder_dim, cfg.patch_size, cfg.latent_channels
        self.patch_size = p
        self.patch_embed = Linear(p * p * c, d)
        self.register_buffer("pos_embed", sincos_2d(cfg.posemb_grid, cfg.posemb_grid, d),
                             persistent=False)
        self.registers = nn.Parameter(0.02 * torch.randn(cfg.num_registers, d))
        self.blocks = nn.ModuleList(
            FlexBlock(d, cfg.head_dim, cfg.mlp_ratio) for _ in range(cfg.encoder_depth)
        )
        self.head = Linear(d, len(cfg.levels))
        if cfg.zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def embed_patches(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> patch embeddings ``[B, H/p, W/p, D]`` (before positions)."""
        return self.patch_embed(patchify(latents, self.patch_size))

    def trunk(self, latents: torch.Tensor, num_registers: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk outputs: patches ``[B, h, w, D]`` and registers ``[B, k, D]``."""
        x = self.embed_patches(latents)
        B, h, w, D = x.shape
        if h > self.pos_embed.shape[2] or w > self.pos_embed.shape[3]:
            raise ValueError(f"a {h}x{w} patch grid exceeds the {self.pos_embed.shape[2]}x"
                             f"{self.pos_embed.shape[3]} position table")
        x = x + self.pos_embed[0, :, :h, :w].permute(1, 2, 0).to(x.dtype)
        k = self.registers.shape[0] if num_registers is None else num_registers
        regs = self.registers[:k].to(x.dtype).expand(B, k, D)
        seq = torch.cat([x.reshape(B, h * w, D), regs], dim=1)
        mask = causal_last_mask(h * w, k, device=seq.device)
        for block in self.blocks:
            seq = block(seq, attn_mask=mask)
        return seq[:, : h * w].reshape(B, h, w, D), seq[:, h * w:]

    def forward(self, latents: torch.Tensor, num_registers: int | None = None) -> torch.Tensor:
        regs = self.trunk(latents, num_registers)[1]
        # the head feeds the quantizer: keep it in the weights' precision under autocast
        with torch.autocast(regs.device.type, enabled=False):
            regs = _layer_norm(regs.to(self.head.weight.dtype))
            return self.head(regs)


class FlexTokDecoder(nn.Module):
    """Rectified-flow velocity ``[B, C, H, W]`` from noised latents, FSQ values and timesteps."""

    def __init__(self, cfg: FlexTokConfig) -> None:
        super().__init__()
        d, p, c = cfg.decoder_dim, cfg.patch_size, cfg.latent_channels
        self.patch_size, self.channels = p, c
        self.null_condition, self.max_timestep = cfg.null_condition, cfg.max_timestep
        self.frequency_embedding_size = cfg.frequency_embedding_size
        self.latent_proj = Linear(len(cfg.levels), d)
        self.register_pos = (nn.Parameter(0.02 * torch.randn(cfg.num_registers, d))
                             if cfg.register_posemb else None)
        self.mask_token = nn.Parameter(0.02 * torch.randn(d))  # nested dropout
        self.null_token = (nn.Parameter(0.02 * torch.randn(d))
                           if cfg.null_condition == "learned" else None)
        self.patch_embed = Linear(p * p * c, d)
        self.register_buffer("pos_embed", sincos_2d(cfg.posemb_grid, cfg.posemb_grid, d),
                             persistent=False)
        self.time_embed = nn.Sequential(Linear(cfg.frequency_embedding_size, d), nn.SiLU(),
                                        Linear(d, d))
        self.blocks = nn.ModuleList(
            FlexBlock(d, cfg.head_dim, cfg.mlp_ratio, adaln_expansion=cfg.adaln_expansion)
            for _ in range(cfg.decoder_depth)
        )
        self.head_modulation = Linear(d, 2 * d) if cfg.head_adaln else None
        self.head = Linear(d, p * p * c)
        if cfg.zero_init:
            for lin in [b.modulation for b in self.blocks] + [self.head, self.head_modulation]:
                if lin is not None:
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """``[B]`` timesteps in [0, 1] -> ``[B, D]``."""
        freq = timestep_embedding(t, self.frequency_embedding_size, self.max_timestep)
        return self.time_embed(freq.to(self.time_embed[0].weight.dtype))

    def registers(self, quants: torch.Tensor, keep: torch.Tensor,
                  uncond: torch.Tensor | None = None) -> torch.Tensor:
        """FSQ values ``[B, N, 6]`` -> register tokens ``[B, N, D]``; registers ``keep[b]..`` are
        the mask token (nested dropout) and samples with ``uncond[b]`` the null condition."""
        reg = self.latent_proj(quants)
        N = reg.shape[1]
        if self.register_pos is not None:
            reg = reg + self.register_pos[:N].to(reg.dtype)
        dropped = torch.arange(N, device=reg.device)[None, :] >= keep.to(reg.device)[:, None]
        reg = torch.where(dropped[..., None], self.mask_token.to(reg.dtype), reg)
        if uncond is not None:
            null = (self.null_token.to(reg.dtype) if self.null_token is not None
                    else reg.new_zeros(reg.shape[-1]))
            reg = torch.where(uncond.to(reg.device)[:, None, None], null, reg)
        return reg

    def trunk(self, patches: torch.Tensor, registers: torch.Tensor, temb: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens ``[B, h, w, D]`` (with positions) + registers ``[B, N, D]`` -> outputs."""
        B, h, w, D = patches.shape
        seq = torch.cat([patches.reshape(B, h * w, D), registers], dim=1)
        segments = (h * w, registers.shape[1])
        for block in self.blocks:
            seq = block(seq, emb=temb, segments=segments)
        return seq[:, : h * w].reshape(B, h, w, D), seq[:, h * w:]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, quants: torch.Tensor,
                keep: torch.Tensor, uncond: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity ``[B, C, H, W]`` of ``x_t`` at ``t: [B]`` given FSQ values ``[B, N, 6]``."""
        p = self.patch_size
        patches = self.patch_embed(patchify(x_t.to(self.patch_embed.weight.dtype), p))
        h, w = patches.shape[1:3]
        patches = patches + self.pos_embed[0, :, :h, :w].permute(1, 2, 0).to(patches.dtype)
        temb = self.embed_time(t)
        regs = self.registers(quants.to(patches.dtype), keep, uncond)
        out = self.trunk(patches, regs, temb)[0]
        out = _layer_norm(out)
        if self.head_modulation is not None:
            shift, scale = self.head_modulation(F.silu(temb)).chunk(2, dim=-1)
            out = _modulate(out, shift[:, None, None], scale[:, None, None])
        return unpatchify(self.head(out), p, self.channels)


def _check_guidance(steps: Any, guidance_scale: Any) -> tuple[int, float]:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not (
        math.isfinite(guidance_scale)
    ):
        raise ValueError(f"guidance_scale must be a finite number; got {guidance_scale!r}")
    return steps, float(guidance_scale)


def apg_update(cond: torch.Tensor, uncond: torch.Tensor, scale: float,
               momentum: torch.Tensor | None, beta: float = -0.5,
               threshold: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance on ``[B, C, H, W]`` predictions; returns (guided, momentum).

    The guidance ``cond - uncond`` is averaged with momentum ``beta``, its norm capped at
    ``threshold`` and only its part orthogonal to ``cond`` (float64 projection) is added.
    """
    diff = cond - uncond
    if momentum is not None:
        diff = diff + beta * momentum
    momentum = diff
    norm = diff.norm(p=2, dim=(1, 2, 3), keepdim=True)
    diff = diff * torch.minimum(torch.ones_like(norm), threshold / norm)
    unit = F.normalize(cond.double().flatten(1), dim=1).view_as(cond)
    d64 = diff.double()
    parallel = (d64 * unit).sum(dim=(1, 2, 3), keepdim=True) * unit
    orthogonal = (d64 - parallel).to(cond.dtype)
    return cond + (scale - 1.0) * orthogonal, momentum


# ---------------------------------------------------------------------- the tokenizer
@register_model_class
class FlexTok(ImageTokenizer):
    """FlexTok tokenizer. See the module docstring; ``FlexTok(FlexTokConfig(...))``.

    ``encode(images, num_tokens=k)`` runs the encoder with only k registers (the causal mask makes
    them equal to the first k of all N); ``decode(codes)`` accepts any prefix ``[B, k, 6]``.
    """

    config_class = FlexTokConfig
    supports_prefix = True

    def __init__(self, config: FlexTokConfig) -> None:
        super().__init__(config)
        from diffusers import AutoencoderKL  # heavy import, only when a FlexTok is built

        self.vae = AutoencoderKL.from_config(dict(config.vae))
        if config.vae_frozen:
            self.vae.requires_grad_(False)
        scaling = config.vae_scaling_factor
        self.scaling_factor = float(scaling if scaling is not None
                                    else config.vae.get("scaling_factor", 1.0))
        self.encoder = FlexTokEncoder(config)
        self.quantizer = build_quantizer(
            QuantizerConfig(type="fsq", dim=len(config.levels), levels=tuple(config.levels)))
        self.decoder = FlexTokDecoder(config)

    def train(self, mode: bool = True) -> FlexTok:
        super().train(mode)
        if self.config.vae_frozen:
            self.vae.eval()  # a frozen VAE stays in eval mode
        return self

    # ------------------------------------------------------------------ description
    @property
    def token_shape(self) -> tuple[int, ...]:
        return (self.config.num_registers,)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the VAE latents the tokens describe."""
        s = self.config.latent_size
        return (self.config.latent_channels, s, s)

    # ------------------------------------------------------------------ VAE
    def vae_encode(self, images: torch.Tensor, sample: bool = False,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] ``[B, 3, H, W]`` -> scaled latents ``[B, C, H/f, W/f]``."""
        dtype = next(self.vae.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.vae_frozen):
            dist = self.vae.encode((images * 2.0 - 1.0).to(dtype)).latent_dist
            z = dist.sample(generator) if sample else dist.mode()
        return z * self.scaling_factor

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images on the [0, 1] scale (not clamped)."""
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scaling_factor).to(dtype)).sample * 0.5 + 0.5

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Images [0, 1] -> pre-quantizer register latents ``[B, k, 6]`` (k = num_tokens or N)."""
        latents = self.vae_encode(images, sample=self.training and self.config.vae_sample_posterior)
        return self.encoder(latents.to(self.encoder.registers.dtype), num_tokens)

    def decode_latents(self, z_q: torch.Tensor, steps: int | None = None,
                       guidance_scale: float | None = None, apg: bool | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """FSQ values ``[B, k, 6]`` (k <= N) -> images on the [0, 1] scale, not clamped.

        This runs the sampler (no gradients): FlexTok trains with ``flow_loss`` (task
        ``flextok``), not with a pixel loss through its decoder.
        """
        if self.training and torch.is_grad_enabled():
            raise ValueError("FlexTok's decoder samples without gradients: train it with the "
                             "rectified-flow loss (training task 'flextok', FlexTok.flow_loss), "
                             "not a reconstruction loss on decode_latents")
        return self.vae_decode(self.sample_latents(z_q, steps, guidance_scale, apg, generator))

    def _keep_and_pad(self, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d = self.config.num_registers, len(self.config.levels)
        if z_q.ndim != 3 or z_q.shape[-1] != d or not 1 <= z_q.shape[1] <= n:
            raise ValueError(
                f"register values must be [B, k, {d}] with 1 <= k <= {n}; got {tuple(z_q.shape)}"
            )
        B, k = z_q.shape[:2]
        keep = torch.full((B,), k, dtype=torch.long, device=z_q.device)
        if k < n:
            z_q = torch.cat([z_q, z_q.new_zeros(B, n - k, d)], dim=1)
        return z_q, keep

    @torch.no_grad()
    def sample_latents(self, z_q: torch.Tensor, steps: int | None = None,
                       guidance_scale: float | None = None, apg: bool | None = None,
                       generator: torch.Generator | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """Euler sampling of scaled VAE latents ``[B, C, h, w]`` from FSQ values ``[B, k, 6]``.

        The starting noise is drawn per sample, in order, from ``generator`` on its device, then
        moved to the model's. Without a generator every sample starts from the noise of a CPU
        generator seeded 0, so decoding is a deterministic function of each image's codes, alone
        or in any batch (up to float rounding).
        """
        cfg = self.config
        steps, scale = _check_guidance(cfg.steps if steps is None else steps,
                                       cfg.guidance_scale if guidance_scale is None
                                       else guidance_scale)
        apg = cfg.apg if apg is None else bool(apg)
        quants, keep = self._keep_and_pad(z_q)
        B, device = quants.shape[0], quants.device
        if noise is None:
            if generator is None:
                seed0 = torch.Generator().manual_seed(0)
                noise = torch.randn((1, *self.latent_shape), generator=seed0).expand(B, -1, -1, -1)
            else:
                noise = torch.cat([torch.randn((1, *self.latent_shape), generator=generator,
                                               device=generator.device) for _ in range(B)])
        if tuple(noise.shape) != (B, *self.latent_shape):
            raise ValueError(f"noise must be [B, C, h, w] = {(B, *self.latent_shape)}; "
                             f"got {tuple(noise.shape)}")
        x = noise.to(device=device, dtype=torch.float32)
        guided = scale != 1.0
        if guided:  # one batched forward for the conditional and the null-condition pass
            quants2, keep2 = torch.cat([quants, quants]), torch.cat([keep, keep])
            uncond = torch.arange(2 * B, device=device) >= B
        momentum = None
        for i in range(steps, 0, -1):
            t = torch.full((B,), i / steps, device=device)
            if guided:
                v = self.decoder(torch.cat([x, x]), torch.cat([t, t]), quants2, keep2,
                                 uncond).float()
                v_c, v_u = v[:B], v[B:]
                if apg:
                    v, momentum = apg_update(v_c, v_u, scale, momentum)
                else:
                    v = v_u + scale * (v_c - v_u)
            else:
                v = self.decoder(x, t, quants, keep).float()
            x = x - v / steps
        return x

    def flow_loss(self, images: torch.Tensor, keep: torch.Tensor | None = None,
                  generator: torch.Generator | None = None,
                  latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Rectified-flow training loss on the VAE latents of ``images`` (nested dropout, CFG
        dropout, logit-normal t). Returns ``{"flow", "x_t", "t", "v", "quant", "keep"}``.
        ``latents``: the scaled VAE latents of ``images`` when the caller has them (cached)."""
        cfg = self.config
        if latents is None:
            latents = self.vae_encode(images, sample=self.training and cfg.vae_sample_posterior,
                                      generator=generator)
        latents = latents.to(self.encoder.registers.dtype)
        quant = self.quantizer(self.encoder(latents))
        B, dev = latents.shape[0], latents.device
        if keep is None:
            keep = self.sample_keep(B, generator).to(dev)
        uncond = torch.rand(B, generator=generator, device=dev) < cfg.cfg_dropout
        if cfg.logit_normal:
            t = torch.sigmoid(torch.randn(B, generator=generator, device=dev))
        else:
            t = torch.rand(B, generator=generator, device=dev)
        noise = torch.randn(latents.shape, generator=generator, device=dev, dtype=latents.dtype)
        tt = t.to(latents.dtype)[:, None, None, None]
        x_t = tt * noise + (1.0 - tt) * latents
        v = self.decoder(x_t, t, quant.z_q, keep, uncond)
        flow = (v.float() - (noise - latents).float()).pow(2).mean()
        return {"flow": flow, "x_t": x_t, "t": t, "v": v, "quant": quant, "keep": keep}

    def sample_keep(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Nested-dropout prefix lengths ``[B]`` in 1..N per ``keep_sampling``."""
        n = self.config.num_registers
        if self.config.keep_sampling == "pow2":
            choices = torch.tensor([2**i for i in range(int(math.log2(n)) + 1)])
            return choices[torch.randint(len(choices), (batch,), generator=generator)]
        k = torch.randint(1, n + 1, (batch,), generator=generator)
        if self.config.keep_sampling == "uniform_pow2":  # round up to a power of two
            k = (2 ** torch.ceil(torch.log2(k.double()))).long()
        return k

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """Training forward: ``quant.losses`` holds ``flow`` (added into ``total``); ``recon`` is
        the VAE decode of the one-step estimate ``x0 = x_t - t * v``."""
        images = check_images(images, self.image_size)
        out = self.flow_loss(images)
        q = out["quant"]
        x0 = out["x_t"] - out["t"].to(out["v"].dtype)[:, None, None, None] * out["v"]
        losses = {**q.losses, "flow": out["flow"], "total": q.losses["total"] + out["flow"]}
        quant = QuantOutput(z_q=q.z_q, codes=q.codes, losses=losses, stats=q.stats)
        return TokenizerOutput(recon=self.vae_decode(x0), quant=quant)

    def last_layer_weight(self) -> torch.Tensor:
        return self.decoder.head.weight

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> codes ``[B, k, 6]`` int64 (k = ``num_tokens`` or N)."""
        k = self.check_num_tokens(num_tokens)
        images = check_images(images, self.image_size)
        return self.quantizer.encode(self.encode_latents(images, k))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, steps: int | None = None,
               guidance_scale: float | None = None, apg: bool | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes ``[B, k, 6]`` (any prefix, 1 <= k <= N) -> images ``[B, 3, H, W]`` in [0, 1].

        Defaults (the paper's): 20 Euler steps, guidance 7.5 with APG. The same ``generator``
        state gives bitwise the same images; without one each image starts from seed-0 noise.
        """
        codes = self.check_codes(codes)
        z_q = self.quantizer.decode(codes).to(self._param_dtype())
        images = self.decode_latents(z_q, steps, guidance_scale, apg, generator)
        return images.float().clamp(0.0, 1.0)

    def _param_dtype(self) -> torch.dtype:
        return self.decoder.head.weight.dtype


# ---------------------------------------------------------------------- presets
_PAPER = ("FlexTok: Resampling Images into 1D Token Sequences of Flexible Length "
          "(arXiv:2502.13967)")
_LICENSE = "Apple sample-code licence (code); research-only weights licence"


def _record(name: str, notes: str) -> PretrainedRecord:
    return PretrainedRecord(
        hub_id=f"EPFL-VILAB/flextok_{name}", filename="model.safetensors", format="flextok",
        config_filename="config.json", input_size=(256, 256), input_range="[-1, 1] internally",
        num_tokens=256, vocab="64000 (FSQ 8,8,8,5,5,5)", license=_LICENSE, paper=_PAPER,
        notes=notes,
    )


def _preset(enc: tuple[int, int], dec: tuple[int, int], overrides: dict[str, Any]) -> FlexTok:
    from ..config import config_from_dict

    base = dict(encoder_dim=enc[0], encoder_depth=enc[1], decoder_dim=dec[0], decoder_depth=dec[1])
    base.update(overrides)
    return FlexTok(config_from_dict(FlexTokConfig, base))


@register_model(pretrained=_record("d12_d12_in1k", "ImageNet-1k; about 0.34B params with the VAE"))
def flextok_d12_d12(**overrides: Any) -> FlexTok:
    """Encoder and decoder 768 wide, 12 deep."""
    return _preset((768, 12), (768, 12), overrides)


@register_model(pretrained=_record("d18_d18_in1k", "ImageNet-1k"))
def flextok_d18_d18(**overrides: Any) -> FlexTok:
    """Encoder and decoder 1152 wide, 18 deep."""
    return _preset((1152, 18), (1152, 18), overrides)


@register_model(pretrained=_record("d18_d28_in1k", "ImageNet-1k; about 2.5B params"))
def flextok_d18_d28(**overrides: Any) -> FlexTok:
    """Encoder 1152 x 18, decoder 1792 x 28."""
    return _preset((1152, 18), (1792, 28), overrides)


# A tiny AutoencoderKL (16 channels, f8) for tests and CPU training.
TINY_VAE_CONFIG: dict[str, Any] = dict(
    FLEXTOK_VAE_CONFIG, block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8,
)


@register_model
def flextok_tiny(**overrides: Any) -> FlexTok:
    """CPU-trainable FlexTok: 64x64 images, tiny f8 VAE, width 64, 2+2 layers, 32 registers."""
    base = dict(image_size=64, vae=dict(TINY_VAE_CONFIG), num_registers=32, posemb_grid=4,
                encoder_dim=64, encoder_depth=2, decoder_dim=64, decoder_depth=2, head_dim=32)
    base.update(overrides)
    return _preset((64, 2), (64, 2), base)
