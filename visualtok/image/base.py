"""The image tokenizer interface every image model implements, and image validation.

``ImageTokenizer`` fixes one public API across TiTok, FlexTok, ReTok and the 2D VQGAN baseline:

* ``encode(images) -> codes [B, *S, F]`` (int64), ``decode(codes) -> images [B, 3, H, W]`` in [0, 1]
  (clamped), ``reconstruct(images)``;
* training hooks: ``encode_latents(images) -> z [B, *S, D]`` (pre-quantizer, channels last),
  ``decode_latents(z_q) -> recon [B, 3, H, W]`` (the [0, 1] scale, not clamped) and
  ``forward(images) -> TokenizerOutput(recon, quant)``; ``last_layer_weight()`` for adaptive GAN
  weighting.

Images are float ``[B, 3, H, W]`` in [0, 1] or uint8 (converted by ``check_images``). Subclasses
convert to the range their weights expect inside ``encode_latents``/``decode_latents``.

Fixed-size tokenizers (learned position tables: TiTok, ReTok) take exactly ``image_size``. Fully
convolutional ones (the 2D VQGAN) set ``size_multiple`` (their downsampling factor): they take any
``H, W`` divisible by it, and their codes are any ``[B, H/f, W/f, F]`` grid; ``image_size`` and
``token_shape`` then describe the nominal (training / evaluation) size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import config_from_dict
from ..data.image_io import to_float, validate_images
from ..hub import PretrainedMixin
from ..quantize.base import Quantizer, QuantOutput
from ..quantize.config import QuantizerConfig
from ..quantize.layout import CodeLayout

__all__ = ["ImageTokenizer", "TokenizerOutput", "check_images"]

def check_images(
    images: object, image_size: tuple[int, int] | None = None, name: str = "images"
) -> torch.Tensor:
    """Validate ``[B, 3, H, W]`` images in [0, 1] (float) or uint8; return float images in [0, 1].

    ``image_size`` (H, W), when given, must match exactly: tokenizers with learned position tables
    have a fixed input size. The checks are ``visualtok.data.image_io.validate_images``.
    """
    images = validate_images(images, name, image_size=image_size)
    if images.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one image (B >= 1); got shape "
                         f"{tuple(images.shape)}")
    return to_float(images)


@dataclass
class TokenizerOutput:
    """Result of ``ImageTokenizer.forward``."""

    recon: torch.Tensor  # [B, 3, H, W] reconstruction on the [0, 1] scale, not clamped
    quant: QuantOutput  # z_q [B, *S, D], codes [B, *S, F], losses (with "total"), stats


def token_size_config(cls: type, base: dict[str, Any], overrides: dict[str, Any]):
    """Merge preset ``base`` with ``overrides`` into ``cls``, a 1D tokenizer config whose
    quantizer ``dim`` is its ``token_size`` (TiTok, TiTok-3D).

    A ``quantizer`` override replaces the preset's wholesale (another family has other options);
    its ``dim`` defaults to ``token_size``, and sets ``token_size`` when only it is given.
    """
    data = {k: v for k, v in {**base, **overrides}.items() if k != "quantizer"}
    replaced = "quantizer" in overrides
    q = overrides["quantizer"] if replaced else base.get("quantizer")
    if isinstance(q, QuantizerConfig):
        q = dataclasses.asdict(q)
    if q is not None:
        if not isinstance(q, dict):
            raise TypeError(f"{cls.__name__}.quantizer must be a QuantizerConfig or a mapping of "
                            f"its fields (e.g. {{'type': 'vq', 'codebook_size': 4096}}); got {q!r}")
        q = dict(q)
        if replaced and "dim" in q and "token_size" not in overrides:
            data["token_size"] = q["dim"]
        elif not replaced or "dim" not in q:
            q["dim"] = data.get("token_size", cls.token_size)
    if replaced or q is not None:
        data["quantizer"] = q  # last, so that a bad token_size is reported under its own name
    return config_from_dict(cls, data)


class ImageTokenizer(nn.Module, PretrainedMixin):
    """Base class of image tokenizers. Subclasses build ``self.quantizer`` and the hooks below."""

    quantizer: Quantizer
    supports_prefix: bool = False  # decode accepts codes[:, :k] (1D, flexible-length tokenizers)
    continuous: bool = False  # KL/VAE mode: latents are continuous, codes come from post-training Q
    size_multiple: int | None = None  # fully convolutional: any H, W divisible by this are accepted
    keep_fp32: tuple[str, ...] = ("quantizer",)  # submodules a bf16/fp16 cast leaves in fp32

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config.validate()  # every field checked once, before any module is built

    def _apply(self, fn, recurse=True):
        """``.to(torch.bfloat16)`` / ``.half()`` cast the trunk; the ``keep_fp32`` submodules (the
        quantizer: codes are searched in fp32, DESIGN §3) are put back to fp32."""
        super()._apply(fn, recurse)
        for name in self.keep_fp32:
            mod = getattr(self, name, None)
            for t in [] if mod is None else [*mod.parameters(), *mod.buffers()]:
                if t.dtype in (torch.bfloat16, torch.float16):
                    t.data = t.data.float()
        return self

    # ------------------------------------------------------------------ description
    @property
    def image_size(self) -> tuple[int, int]:
        """Input size (H, W): the config's square ``image_size`` unless a subclass says more."""
        return (self.config.image_size, self.config.image_size)

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Token layout S, e.g. ``(N,)`` for a 1D tokenizer or ``(h, w)`` for a 2D one."""
        raise NotImplementedError

    @property
    def num_tokens(self) -> int:
        n = 1
        for s in self.token_shape:
            n *= s
        return n

    @property
    def max_tokens(self) -> int:
        """The most tokens ``encode`` emits (``num_tokens=k`` takes a prefix of them)."""
        return self.num_tokens

    @property
    def code_layout(self) -> CodeLayout:
        return self.quantizer.layout

    @property
    def bits_per_image(self) -> float:
        return self.num_tokens * self.code_layout.bits_per_token

    # ------------------------------------------------------------------ training hooks
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] -> pre-quantizer latents ``[B, *S, D]``."""
        raise NotImplementedError

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantized latents ``[B, *S, D]`` -> recon ``[B, 3, H, W]`` ([0, 1] scale, unclamped)."""
        raise NotImplementedError

    def quantize(self, z: torch.Tensor) -> QuantOutput:
        """Latents -> ``QuantOutput``; VAE-style subclasses override (posterior, KL loss)."""
        return self.quantizer(z)

    def check_input(self, images: object) -> torch.Tensor:
        """Validate images for this tokenizer -> float ``[B, 3, H, W]`` in [0, 1].

        Exactly ``image_size``, or, with ``size_multiple``, any ``H, W`` divisible by it.
        """
        if self.size_multiple is None:
            return check_images(images, self.image_size)
        images = check_images(images)
        f, (h, w) = self.size_multiple, images.shape[-2:]
        if h % f or w % f:
            raise ValueError(
                f"images must have H and W divisible by the downsampling factor {f} "
                f"(e.g. {self.image_size[0]}x{self.image_size[1]}); got {h}x{w}"
            )
        return images

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        images = self.check_input(images)
        quant = self.quantize(self.encode_latents(images))
        return TokenizerOutput(recon=self.decode_latents(quant.z_q), quant=quant)

    def last_layer_weight(self) -> torch.Tensor:
        """The final decoder weight (for the adaptive GAN weight of VQGAN-style training): the
        CNN decoders' ``decoder.conv_out`` unless a subclass names another layer."""
        conv_out = getattr(getattr(self, "decoder", None), "conv_out", None)
        if conv_out is None:
            raise NotImplementedError(f"{type(self).__name__} must define last_layer_weight()")
        return conv_out.weight

    # ------------------------------------------------------------------ public API
    def check_codes(self, codes: object) -> torch.Tensor:
        """Validate codes ``[B, *S, F]`` (a prefix when ``supports_prefix``) and their range."""
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor [B, *S, F]; got {type(codes).__name__}")
        s, f = self.token_shape, self.code_layout.num_factors
        want = f"[B, {', '.join(map(str, s))}, {f}]"
        ok_rank = codes.ndim == len(s) + 2 and codes.shape[-1] == f
        if ok_rank and self.supports_prefix and len(s) == 1:
            ok_shape = 1 <= codes.shape[1] <= s[0]
            want += f" (or a prefix [B, k, {f}], 1 <= k <= {s[0]})"
        elif self.size_multiple is not None:
            ok_shape = ok_rank and min(codes.shape[1:-1], default=1) >= 1
            want += f" (or any [B, {', '.join('h w'.split()[:len(s)])}, {f}] grid)"
        else:
            ok_shape = ok_rank and tuple(codes.shape[1:-1]) == tuple(s)
        if not ok_shape or codes.shape[0] == 0:
            raise ValueError(f"codes must be {want} with B >= 1; got shape {tuple(codes.shape)}")
        return self.code_layout.validate(codes)

    def check_num_tokens(self, num_tokens: object) -> int | None:
        """Validate ``encode(..., num_tokens=k)``: None (all tokens) or 1 <= k <= max_tokens."""
        if num_tokens is None:
            return None
        if not self.supports_prefix:
            raise ValueError(
                f"{type(self).__name__} emits a fixed {self.num_tokens} tokens: num_tokens must "
                f"be None; got {num_tokens!r}"
            )
        if (isinstance(num_tokens, bool) or not isinstance(num_tokens, int)
                or not 1 <= num_tokens <= self.max_tokens):
            raise ValueError(
                f"num_tokens must be an int in [1, {self.max_tokens}]; got {num_tokens!r}"
            )
        return num_tokens

    @torch.no_grad()
    def encode(self, images: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` (float [0, 1] or uint8) -> codes ``[B, *S, F]`` int64.

        1D tokenizers (``supports_prefix``) take ``num_tokens=k`` and return the first k tokens
        ``[B, k, F]``, which ``decode`` accepts.
        """
        k = self.check_num_tokens(num_tokens)
        images = self.check_input(images)
        z = self._latents_for_codes(self.encode_latents(images))
        codes = self.quantizer.encode(z)
        return codes if k is None else codes[:, :k]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, *S, F]`` -> images ``[B, 3, H, W]`` float in [0, 1] (clamped)."""
        codes = self.check_codes(codes)
        z_q = self.quantizer.decode(codes).to(self._param_dtype())
        return self.decode_latents(z_q).float().clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``decode(encode(images))``: images in, images in [0, 1] out."""
        return self.decode(self.encode(images))

    # ------------------------------------------------------------------ helpers
    def _latents_for_codes(self, z: torch.Tensor) -> torch.Tensor:
        """What the quantizer sees at ``encode`` time (VAE subclasses: the posterior mean)."""
        return z

    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype if p.dtype.is_floating_point else torch.float32
        return torch.float32


def preset_config(config_class: type, base: dict[str, Any], overrides: dict[str, Any],
                  quantizer_dim: int) -> Any:
    """Merge preset ``base`` with ``overrides`` (config field names) into ``config_class``.

    A ``quantizer`` override replaces the preset's quantizer wholesale; its ``dim`` defaults to
    ``quantizer_dim``.
    """
    data = {**base, **overrides}
    q = data.get("quantizer")
    if isinstance(q, QuantizerConfig):
        q = dataclasses.asdict(q)
    if isinstance(q, dict):
        data["quantizer"] = {"dim": quantizer_dim, **q}
    return config_from_dict(config_class, data)
