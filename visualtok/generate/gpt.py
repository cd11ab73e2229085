"""GPT: a LlamaGen-style decoder-only transformer over any tokenizer's codes.

LlamaGen ("Autoregressive Model Beats Diffusion", Sun et al. 2024): pre-norm RMSNorm, SwiGLU, RoPE,
fused qkv through SDPA (the shared ``visualtok.nn.attention.Attention``), class conditioning by one
class-embedding token with a null row for classifier-free guidance (label dropout 0.1), a
zero-initialised output head. LlamaGen-B (12 x 768, vocab 16384, 256 tokens) is ``gpt_b``, 111M.

The GPT knows the tokenizer's ``CodeLayout`` and picks its input embedding and output head from it
(``heads.py``): flat softmax, per-factor causal head (TokenBridge) or per-bit head. Codes are
``[B, *S, F]`` as every quantizer returns them; ``S`` is flattened row-major to ``N`` tokens.
Audio codec codes ``[B, T_frames, n_q]`` are one token per frame with the factor head over the RVQ
levels (``gpt_speech``), or, with ``delay_pattern=True``, MusicGen's delay pattern (``delay.py``:
level ``k`` shifted ``k`` steps, a pad symbol per level, forced outside each level's frames).

Sequence: ``[cond, x_0, ..., x_{N-2}]``; the state at position ``t`` predicts ``x_t``. With
``causal=False`` the same trunk is bidirectional over ``[cond, x_0 .. x_{N-1}]`` with a learned mask
token (MaskGIT, ``maskgit.py``). Decoding uses static per-layer ``KVCache`` buffers and position
masks, so one step has fixed shapes (``torch.compile`` friendly).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import torch
from torch import nn

from ..config import (
    Config,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Radix,
    Range,
    config_from_dict,
)
from ..hub import PretrainedMixin
from ..nn.attention import KVCache, rotary_tables
from ..quantize.layout import CodeLayout
from ..registry import PretrainedRecord, register_model, register_model_class
from .blocks import Block, RMSNorm, ffn_hidden_dim
from .heads import CodeEmbedding, build_head, resolve_head, resolve_input

__all__ = ["GPTConfig", "GPT", "GPTOutput", "gpt_tiny", "gpt_small", "gpt_b", "gpt_l", "gpt_speech"]


@dataclass
class GPTConfig(Config):
    """Constructor arguments of ``GPT``."""

    # the tokenizer's CodeLayout radices
    radices: Annotated[tuple[Radix, ...], Range(ge=1)] = (16384,)
    layout_kind: Literal["vq", "rvq", "fsq", "lfq", "ptq"] = "vq"  # CodeLayout.kind
    layout_residual: bool = False
    # N, the longest token sequence (context = N for AR, N + 1 for MaskGIT)
    num_tokens: PositiveInt = 256
    num_layers: PositiveInt = 12
    dim: PositiveInt = 768
    num_heads: PositiveInt = 12
    ffn_multiple_of: PositiveInt = 256  # SwiGLU width = 8/3 dim rounded up to this
    norm_eps: PositiveFloat = 1e-5
    rope_base: PositiveFloat = 10000.0
    # 0 = unconditional (every sequence starts from the null token)
    num_classes: NonNegativeInt = 1000
    # training: replace labels by the null class (for CFG)
    class_dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1
    causal: bool = True  # False: bidirectional trunk with a mask token (MaskGIT)
    # auto | flat | factor | factor_independent | bit
    head: Literal["auto", "flat", "factor", "factor_independent", "bit"] = "auto"
    # auto | embedding | factor_embedding | features
    input: Literal["auto", "embedding", "factor_embedding", "features"] = "auto"
    feature_dim: NonNegativeInt = 0  # width of quantizer.features(codes) for input="features"
    factor_head_dim: PositiveInt = 256  # width of the per-factor head's transformer
    factor_head_layers: PositiveInt = 2
    factor_head_heads: PositiveInt = 4
    init_std: PositiveFloat = 0.02
    # RVQ codes [B, T, K]: MusicGen's delay pattern (level k shifted by k, K - 1 extra steps, a pad
    # symbol per level; generate.delay). False: one step per frame, the factor head over levels.
    delay_pattern: bool = False
    # names of the classes, for people (grid labels, file names); () = unnamed. Filled from the
    # token folder's class_names when a generator is trained (``GeneratorTask``).
    class_names: tuple[str, ...] = ()

    def validate(self) -> GPTConfig:
        super().validate()
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(
                f"GPTConfig.num_heads {self.num_heads} must divide dim {self.dim} into an even "
                f"head width (rotary embeddings rotate pairs of channels)"
            )
        if self.factor_head_dim % self.factor_head_heads:
            raise ValueError(
                f"GPTConfig.factor_head_heads {self.factor_head_heads} must divide "
                f"factor_head_dim {self.factor_head_dim}"
            )
        if self.delay_pattern and (not self.causal or self.input == "features"
                                   or len(self.radices) < 2):
            raise ValueError(
                "GPTConfig.delay_pattern needs a causal GPT over codes of >= 2 levels with a "
                f"code-embedding input; got causal={self.causal}, input={self.input!r}, "
                f"{len(self.radices)} level(s)"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"GPTConfig.class_names must name all num_classes = {self.num_classes} classes "
                f"(or be empty); got {len(self.class_names)} names"
            )
        return self


@dataclass
class GPTOutput:
    loss: torch.Tensor  # scalar mean NLL in nats per (predicted) token
    nll: torch.Tensor  # [B, N] per-token NLL (zeros where not predicted)


@register_model_class
class GPT(nn.Module, PretrainedMixin):
    """Class-conditional (or unconditional) AR / masked generator over codes ``[B, N, F]``."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config.validate()
        c = config
        self.layout = CodeLayout(tuple(c.radices), c.layout_kind, c.layout_residual)
        # what one step models: the codes, or with the delay pattern each level plus its pad
        self.step_layout = self.layout if not c.delay_pattern else CodeLayout(
            tuple(r + 1 for r in c.radices), c.layout_kind, c.layout_residual)
        self.head_type = resolve_head(c.head, self.step_layout)
        self.input_type = resolve_input(c.input, self.head_type, self.step_layout)
        self.max_len = c.num_tokens + (0 if c.causal else 1)
        self.null_class = c.num_classes  # the label of "no class" (unconditional rows, CFG)
        self.class_embedding = nn.Embedding(c.num_classes + 1, c.dim)  # last row = null class
        self.embed = CodeEmbedding(self.input_type, self.step_layout, c.dim, c.feature_dim)
        self.mask_token = None if c.causal else nn.Parameter(torch.zeros(c.dim))
        hidden = ffn_hidden_dim(c.dim, c.ffn_multiple_of)
        self.layers = nn.ModuleList(
            Block(c.dim, c.num_heads, hidden, c.norm_eps) for _ in range(c.num_layers)
        )
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.head = build_head(
            self.head_type,
            c.dim,
            self.step_layout,
            c.factor_head_dim,
            c.factor_head_layers,
            c.factor_head_heads,
        )
        cos, sin = rotary_tables(torch.arange(self.max_len), c.dim // c.num_heads, c.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # key positions of the static KV buffers, for the causal mask of a cached step
        self.register_buffer("cache_keys", torch.arange(self.max_len), persistent=False)
        self._caches: list[KVCache] | None = None  # static decode buffers, see setup_cache
        self._compiled_step = None  # torch.compile(self.step), made on first compiled generate
        self.apply(self._init_weights)
        for name in ("output", "out_weight", "out_bias"):  # zero-initialised output head
            p = getattr(self.head, name, None)
            if p is not None:
                nn.init.zeros_(p.weight if isinstance(p, nn.Linear) else p)
                if isinstance(p, nn.Linear) and p.bias is not None:
                    nn.init.zeros_(p.bias)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self.config.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=self.config.init_std)

    # ------------------------------------------------------------------ properties
    @property
    def code_layout(self) -> CodeLayout:
        return self.layout

    def bind_quantizer(self, quantizer: nn.Module) -> GPT:
        """Use ``quantizer.features`` as the embedding-free input (``input="features"``)."""
        if quantizer.layout.radices != self.layout.radices:
            raise ValueError(
                f"quantizer layout {quantizer.layout.radices} differs from the GPT's "
                f"{self.layout.radices}"
            )
        self.embed.features_fn = quantizer.features
        return self

    # ------------------------------------------------------------------ validation
    def check_codes(self, codes: Any) -> torch.Tensor:
        """``[B, *S, F]`` -> ``[B, N, F]`` int64, validated against the layout and the context."""
        codes = self.layout.validate(codes)
        if codes.ndim < 3 or codes.shape[0] == 0 or codes[0, ..., 0].numel() == 0:
            raise ValueError(
                f"codes must be [B, *S, {self.layout.num_factors}] (S = token layout) with at "
                f"least one sequence and one token; got shape {tuple(codes.shape)}"
            )
        codes = codes.reshape(codes.shape[0], -1, self.layout.num_factors)
        if codes.shape[1] + self.delay_steps > self.config.num_tokens:
            extra = f" + {self.delay_steps} delay steps" if self.delay_steps else ""
            raise ValueError(
                f"sequence of {codes.shape[1]} tokens{extra} is longer than the GPT context of "
                f"{self.config.num_tokens} tokens"
            )
        return codes

    @property
    def delay_steps(self) -> int:
        """Extra steps of the delay pattern (``K - 1``; 0 without it)."""
        return self.layout.num_factors - 1 if self.config.delay_pattern else 0

    def delay_pads(self) -> list[int]:
        """The pad symbol of each level under the delay pattern: its radix."""
        return list(self.layout.radices)

    def check_labels(self, labels: Any, batch_size: int | None = None) -> torch.Tensor | None:
        """Class ids ``[B]`` in ``[0, num_classes)``; ``None`` only for an unconditional GPT."""
        n = self.config.num_classes
        if labels is None:
            if n:
                raise ValueError(
                    f"this GPT is class-conditional ({n} classes): labels [B] are required"
                )
            return None
        if n == 0:
            raise ValueError("this GPT is unconditional (num_classes=0): pass labels=None")
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.ndim != 1:
            raise ValueError(
                f"labels must be integer class ids [B]; got {labels.dtype} "
                f"shape {tuple(labels.shape)}"
            )
        if batch_size is not None and labels.shape[0] != batch_size:
            raise ValueError(
                f"labels must be [B] with B={batch_size}; got shape {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
            raise ValueError(
                f"class id out of range: labels must be in [0, {n}); got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return labels.long().to(self.class_embedding.weight.device)

    # ------------------------------------------------------------------ trunk
    def condition(
        self, labels: torch.Tensor | None, batch_size: int, drop: bool = False
    ) -> torch.Tensor:
        """Class (or null) token ``[B, 1, D]``; ``drop`` applies label dropout (training)."""
        dev = self.class_embedding.weight.device
        if labels is None:
            labels = torch.full((batch_size,), self.null_class, dtype=torch.long, device=dev)
        elif drop and self.config.class_dropout > 0:
            keep = torch.rand(labels.shape, device=dev) >= self.config.class_dropout
            labels = torch.where(keep, labels, torch.full_like(labels, self.null_class))
        return self.class_embedding(labels)[:, None]

    def embed_codes(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Codes ``[B, L, F]`` -> ``[B, L, D]``; where ``mask [B, L]`` is True: the mask token."""
        x = self.embed(codes)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        return x

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """No-cache pass over ``x [B, L, D]`` (positions 0..L-1) -> normed states ``[B, L, D]``."""
        L = x.shape[1]
        rot = (self.rope_cos[:L], self.rope_sin[:L])
        for layer in self.layers:
            x = layer(x, rotary=rot, is_causal=self.config.causal)
        return self.norm(x)

    def setup_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Allocate static ``KVCache`` buffers ``[B, H, max_len, head_dim]`` for every layer.

        Buffers of the same shape, dtype and device are reused: stale entries are harmless since a
        step at position ``t`` writes ``t`` and attends only to positions ``<= t``.
        """
        p = self.class_embedding.weight
        c = self.config
        dtype, device = dtype or p.dtype, torch.device(device or p.device)
        old = self._caches[0].k if self._caches else None
        if old is not None and (old.shape[0], old.dtype, old.device) == (batch_size, dtype, device):
            return
        self._caches = [
            KVCache(
                batch_size,
                c.num_heads,
                self.max_len,
                c.dim // c.num_heads,
                dtype,
                device,
            )
            for _ in self.layers
        ]

    def clear_cache(self) -> None:
        """Free the KV-cache buffers."""
        self._caches = None

    def step(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Cached pass over inputs ``x [B, L, D]`` at ``positions [L]`` -> states ``[B, L, D]``."""
        if self._caches is None or self._caches[0].k.shape[0] != x.shape[0]:
            raise ValueError(
                "call setup_cache(batch_size) before step(); the batch size must match"
            )
        rot = (self.rope_cos[positions], self.rope_sin[positions])
        end = None  # static shapes: attend over the whole buffer with a causal mask
        if positions.device.type == "cpu" and not torch.compiler.is_compiling():
            # eager CPU: attend to the written prefix only (no sync to read positions here); one
            # new token at the end of the prefix needs no mask. Late keys beyond the prefix are
            # masked out either way, so the result is the same.
            end = int(positions.max()) + 1
        mask = self.cache_keys[None, :end] <= positions[:, None]  # [L, end]: causal
        if end is not None and x.shape[1] == 1:
            mask = None
        for layer, cache in zip(self.layers, self._caches):
            x = layer(x, rotary=rot, attn_mask=mask, kv_cache=cache, cache_positions=positions,
                      kv_length=end)
        return self.norm(x)

    def hidden_states(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        drop_labels: bool = False,
    ) -> torch.Tensor:
        """States ``[B, N, D]`` that predict ``codes [B, N, F]`` (causal: from the prefix)."""
        B = codes.shape[0]
        cond = self.condition(labels, B, drop=drop_labels)
        if self.config.causal:
            if codes.shape[1] == 1:
                return self.trunk(cond)
            return self.trunk(torch.cat([cond, self.embed_codes(codes[:, :-1])], 1))
        if mask is None:
            raise ValueError("a bidirectional (causal=False) GPT needs mask [B, N] (True = masked)")
        return self.trunk(torch.cat([cond, self.embed_codes(codes, mask)], 1))[:, 1:]

    def forward(
        self,
        codes: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> GPTOutput:
        """Loss on ``codes [B, *S, F]``: next-token NLL (masked-token NLL if not causal)."""
        codes = self.check_codes(codes)
        if self.config.delay_pattern:
            from .delay import delay_codes

            codes = delay_codes(codes, self.delay_pads())  # [B, N + K - 1, K]; pads are targets
        B, N, nf = codes.shape
        labels = self.check_labels(labels, B)
        if mask is not None and tuple(mask.shape) != (B, N):
            raise ValueError(
                f"mask must be a bool [B, N] = {(B, N)}; got shape {tuple(mask.shape)}"
            )
        h = self.hidden_states(codes, labels, mask, drop_labels=self.training)
        nll = self.head.nll(h.reshape(B * N, -1), codes.reshape(B * N, nf)).reshape(B, N)
        if mask is not None:
            nll = nll * mask
            return GPTOutput(nll.sum() / mask.sum().clamp_min(1), nll)
        return GPTOutput(nll.mean(), nll)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, labels: Any = None, **kwargs: Any) -> torch.Tensor:
        """Sample codes ``[B, k, F]``, ``k = num_tokens <= N``; keyword arguments as
        ``autoregressive.generate_ar`` (``num_samples``, ``num_tokens``, ``sampling``,
        ``generator``, ``use_cache``, ``compile``, sampling fields such as ``cfg_scale``)."""
        from .autoregressive import generate_ar

        return generate_ar(self, labels, **kwargs)


# ---------------------------------------------------------------------- presets
def _build(defaults: dict[str, Any], overrides: dict[str, Any]) -> GPT:
    """Preset builder; ``layout=CodeLayout`` (or a tokenizer's ``code_layout``) sets the radices."""
    overrides = dict(overrides)
    layout = overrides.pop("layout", None)
    cfg = config_from_dict(GPTConfig, {**defaults, **overrides})
    if layout is not None:
        if isinstance(layout, dict):
            layout = CodeLayout.from_dict(layout)
        cfg = replace(
            cfg, radices=layout.radices, layout_kind=layout.kind, layout_residual=layout.residual
        )
    return GPT(cfg)


@register_model(task="generator", tags=("test",))
def gpt_tiny(**overrides: Any) -> GPT:
    """2 x 64 GPT for tests: 32 tokens, vocab 1024, 10 classes."""
    return _build(
        dict(
            radices=(1024,),
            num_tokens=32,
            num_layers=2,
            dim=64,
            num_heads=4,
            ffn_multiple_of=32,
            num_classes=10,
            factor_head_dim=64,
            factor_head_layers=1,
        ),
        overrides,
    )


@register_model(task="generator")
def gpt_small(**overrides: Any) -> GPT:
    """8 x 512 GPT (~30M with vocab 4096, 64 tokens): CPU-trainable on small token sets."""
    return _build(
        dict(radices=(4096,), num_tokens=64, num_layers=8, dim=512, num_heads=8), overrides
    )


@register_model(task="generator")
def gpt_b(**overrides: Any) -> GPT:
    """LlamaGen GPT-B: 12 x 768, 12 heads, vocab 16384, 256 tokens, 1000 classes (~111M)."""
    return _build(
        dict(radices=(16384,), num_tokens=256, num_layers=12, dim=768, num_heads=12), overrides
    )


@register_model(task="generator")
def gpt_l(**overrides: Any) -> GPT:
    """LlamaGen GPT-L: GPT-B at 24 x 1024, 16 heads (~343M)."""
    return gpt_b(**{"num_layers": 24, "dim": 1024, "num_heads": 16, **overrides})


@register_model(task="generator")
def gpt_speech(**overrides: Any) -> GPT:
    """Unconditional speech-token GPT over ``codec_small`` codes ``[B, T, 8]`` (8 x 1024 RVQ at
    50 Hz): 4 x 256, one step per frame with the factor head over the 8 levels, 5 s context;
    ``delay_pattern=True`` for MusicGen's delay pattern instead."""
    return _build(
        dict(radices=(1024,) * 8, layout_kind="rvq", layout_residual=True, num_tokens=257,
             num_layers=4, dim=256, num_heads=4, ffn_multiple_of=64, num_classes=0,
             head="factor", factor_head_dim=128, factor_head_layers=1),
        overrides,
    )


# ---------------------------------------------------------------------- weights shipped in weights/
# sha256 of weights/gpt_photo128/model.safetensors
_PHOTO128_SHA256 = "7039391975c96e72e7f84a59ab6d49d8d1148f791685dc4c9d0f5c3a83b52049"


@register_model(
    task="generator",
    pretrained=PretrainedRecord(
        filename="model.safetensors", format="visualtok", num_tokens=128,
        vocab="4096 (codes of titok_photo128)", license="Apache-2.0", sha256=_PHOTO128_SHA256,
        notes="trained by us on titok_photo128 tokens of real photos; 4 classes = photo "
        "collections (0 debian_wallpapers, 1 gcompris, 2 mdn_cc0, 3 pypi_samples)",
    ),
)
def gpt_photo128(**overrides: Any) -> GPT:
    """Shipped generator over ``titok_photo128`` codes: 5 x 256, 4 classes (6.1M parameters)."""
    return _build(
        dict(radices=(4096,), num_tokens=128, num_layers=5, dim=256, num_heads=4,
             ffn_multiple_of=64, num_classes=4,
             class_names=("debian_wallpapers", "gcompris", "mdn_cc0", "pypi_samples")),
        overrides,
    )
