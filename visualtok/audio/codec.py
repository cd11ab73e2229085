"""visualtok's own audio codec: a DAC/SEANet-style conv autoencoder on the shared RVQ core, with a
causal option whose chunked streaming gives exactly the offline codes.

* **encoder**: a 7-tap conv to ``encoder_dim``, then per stride ``s`` in ``ratios`` a block of
  residual units (dilations 1, 3, 9: act, 7-tap dilated conv, act, 1-tap conv, plus the input),
  act and a ``2s``-tap stride-``s`` conv doubling the width; act and a 3-tap conv to the latent;
* **decoder**: a 7-tap conv to ``decoder_dim``, per stride act, a ``2s``-tap transposed conv
  halving the width and three residual units; act, a 7-tap conv to one channel, tanh;
* act is Snake (DAC) or ELU (SEANet); every conv is weight-normalised, with zero padding;
* about 10M parameters for ``codec_small`` (DAC 16 kHz: 74M), 11M for ``codec_lm``;
* **RVQ** from the quantizer core (``ResidualVectorQuantizer``): factorised 8-d l2-normalised
  codes decoded through their raw rows (DAC), quantizer dropout per sample, k-means init on the
  first batch and dead-code restart (tiny codebooks collapse without them), codebook + 0.25
  commitment losses;
* the input is right-padded with zeros to a multiple of the hop.

``causal=True`` pads every conv on the left only (``span - stride`` zeros) and trims transposed
convs on the right, so frame ``n`` depends on samples ``< (n + 1) * hop`` only. Then
``StreamingEncoder`` / ``StreamingDecoder`` run the same layers chunk by chunk, each conv keeping
the inputs its next window needs (each transposed conv its overlap tail): chunks of any size (one
sample, less than a hop, many hops) give the offline codes exactly and the offline audio up to
float rounding (the transposed-conv tails are added in a different order). A stream lays out its
kernels and code tables once, when it starts: one used after the model's weights changed raises a
clear error (start a new stream). Speed: 20 ms chunks cost 1.6-2.6x the offline CPU time on a
shared 2-core CPU (benchmarks/RESULTS.md, issue #16): every chunk re-reads the 256/512-wide
layers' ~17 MB of kernels at 1-10 rows, which offline reads once per call.

Presets (each takes ``causal=True``): ``codec_tiny`` (16 kHz, hop 320, 4 x 256, 0.67M params,
tests), ``codec_small`` (16 kHz, hop 320 = 50 Hz, 8 x 1024 = 4 kbps) and ``codec_lm`` (16 kHz,
hop 640 = 25 Hz, 4 x 1024 = 1 kbps, short sequences for the generator).
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..quantize.base import fp32_no_autocast
from ..quantize.config import QuantizerConfig
from ..quantize.search import l2_normalize, score_weight_and_bias
from ..registry import register_model, register_model_class
from .base import ConvRVQCodec, check_audio, dac_rvq_config
from .layers import Snake, Stack, WNConv1d, WNConvTranspose1d, params_key

__all__ = ["CodecConfig", "Codec", "StreamingEncoder", "StreamingDecoder", "StreamState"]

_ACTIVATIONS = ("snake", "elu")


@dataclass
class CodecConfig:
    sample_rate: int = 16000
    ratios: tuple[int, ...] = (2, 4, 5, 8)  # encoder strides; the decoder uses them reversed
    encoder_dim: int = 32  # width of the first conv, doubled by each encoder block
    decoder_dim: int = 512  # width after the decoder's first conv, halved by each block
    latent_dim: int = 128
    dilations: tuple[int, ...] = (1, 3, 9)
    activation: str = "snake"  # snake (DAC) | elu (SEANet)
    causal: bool = False  # left-only padding: exact chunked streaming (StreamingEncoder/Decoder)
    n_codebooks: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: float = 0.5  # training: share of each batch on a random prefix of levels
    kmeans_init: bool = True
    dead_code_threshold: float = 0.02  # EMA usage (codes per batch) below which a code restarts

    def validate(self) -> CodecConfig:
        for name in ("sample_rate", "encoder_dim", "decoder_dim", "latent_dim", "n_codebooks",
                     "codebook_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CodecConfig.{name} must be a positive int; got {v!r}")
        if isinstance(self.codebook_size, bool) or not isinstance(self.codebook_size, int) or (
                self.codebook_size < 2):
            raise ValueError(f"CodecConfig.codebook_size must be an int >= 2; "
                             f"got {self.codebook_size!r}")
        for name in ("ratios", "dilations"):
            v = tuple(getattr(self, name))
            if not v or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in v):
                raise ValueError(f"CodecConfig.{name} must be a non-empty list of positive ints; "
                                 f"got {getattr(self, name)!r}")
            setattr(self, name, v)
        if self.decoder_dim % 2 ** len(self.ratios):
            raise ValueError(f"CodecConfig.decoder_dim ({self.decoder_dim}) must be divisible by "
                             f"2**len(ratios) = {2 ** len(self.ratios)} (halved per block)")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"CodecConfig.activation must be one of {_ACTIVATIONS}; "
                             f"got {self.activation!r}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"CodecConfig.causal must be true or false; got {self.causal!r}")
        if not 0.0 <= float(self.quantizer_dropout) <= 1.0:
            raise ValueError(f"CodecConfig.quantizer_dropout must be in [0, 1]; "
                             f"got {self.quantizer_dropout!r}")
        if float(self.dead_code_threshold) < 0:
            raise ValueError(f"CodecConfig.dead_code_threshold must be >= 0; "
                             f"got {self.dead_code_threshold!r}")
        return self

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    def quantizer_config(self) -> QuantizerConfig:
        return dac_rvq_config(self, kmeans_init=self.kmeans_init,
                              dead_code_threshold=float(self.dead_code_threshold))


# ---------------------------------------------------------------------- streamable layers
class Conv(nn.Module):
    """Weight-normalised conv with zero padding: ``span - stride`` zeros on the left (causal) or
    split around the signal (streamed by ``_ConvStream``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, causal: bool = False) -> None:
        super().__init__()
        self.conv = WNConv1d(c_in, c_out, kernel_size, stride=stride, dilation=dilation)
        self.c_out, self.stride, self.causal = c_out, stride, causal
        self.span = (kernel_size - 1) * dilation + 1
        self.pad = self.span - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.pad if self.causal else self.pad // 2
        return self.conv(F.pad(x, (left, self.pad - left)))


class ConvTranspose(nn.Module):
    """Weight-normalised ``2s``-tap stride-``s`` transposed conv giving exactly ``s`` samples per
    input frame: the ``s``-sample overlap is trimmed on the right (causal) or split (streamed by
    ``_ConvTransposeStream``, which carries it to the next chunk)."""

    def __init__(self, c_in: int, c_out: int, stride: int, causal: bool = False) -> None:
        super().__init__()
        self.conv = WNConvTranspose1d(c_in, c_out, 2 * stride, stride)
        self.c_out, self.stride, self.causal = c_out, stride, causal
        self.trim = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        left = 0 if self.causal else self.trim // 2
        return y[..., left: y.shape[-1] - (self.trim - left)]


def _activation(kind: str, channels: int) -> nn.Module:
    return Snake(channels) if kind == "snake" else nn.ELU()


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int, cfg: CodecConfig) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _activation(cfg.activation, dim), Conv(dim, dim, 7, dilation=dilation,
                                                   causal=cfg.causal),
            _activation(cfg.activation, dim), Conv(dim, dim, 1, causal=cfg.causal),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(Stack):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        d = cfg.encoder_dim
        layers: list[nn.Module] = [Conv(1, d, 7, causal=cfg.causal)]
        for stride in cfg.ratios:
            layers += [ResidualUnit(d, r, cfg) for r in cfg.dilations]
            layers += [_activation(cfg.activation, d),
                       Conv(d, 2 * d, 2 * stride, stride=stride, causal=cfg.causal)]
            d *= 2
        layers += [_activation(cfg.activation, d), Conv(d, cfg.latent_dim, 3, causal=cfg.causal)]
        self.layers = nn.Sequential(*layers)


class Decoder(Stack):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        d = cfg.decoder_dim
        layers: list[nn.Module] = [Conv(cfg.latent_dim, d, 7, causal=cfg.causal)]
        for stride in reversed(cfg.ratios):
            layers += [_activation(cfg.activation, d),
                       ConvTranspose(d, d // 2, stride, causal=cfg.causal)]
            d //= 2
            layers += [ResidualUnit(d, r, cfg) for r in cfg.dilations]
        layers += [_activation(cfg.activation, d), Conv(d, 1, 7, causal=cfg.causal), nn.Tanh()]
        self.layers = nn.Sequential(*layers)


def _zero_biases(m: nn.Module) -> None:
    if isinstance(m, (WNConv1d, WNConvTranspose1d)) and m.bias is not None:
        with torch.no_grad():
            m.bias.zero_()


# ---------------------------------------------------------------------- streaming kernels
# A stream runs the causal layers on time-major chunks ``[B, t, C]`` (the layout the quantizer
# reads and writes, so no transposes between layers). Everything that depends only on the weights
# is laid out once, when the stream starts (they are frozen at inference; ``StreamState`` refuses
# a model whose weights changed since): the weight-normalised kernels as GEMM operands, Snake's
# ``alpha`` and ``1 / alpha``, and per RVQ level the normalised codebook, its score bias and the
# table of decoded rows; kept on the layers (``_laid_out``, keyed by the weights' versions) and
# shared by the model's streams. Each conv is one ``addmm`` (bias fused) on the windows of a
# preallocated buffer that holds the inputs its next window needs; a Snake in front of a conv
# writes its output straight into that buffer (no copy); each transposed conv is one GEMM whose
# overlapping half is carried to the next chunk. A conv that gives one row per frame with 4x more
# inputs than outputs (the encoder's last two) keeps its kernel ``[C_out, K]`` and runs ``addmv``
# at one row: MKL's dot-product GEMV streams such a tall (up to 8 MB) weight 1.3-1.4x faster than
# ``addmm``, with caches flushed; for wide ones (the decoder's first transposed conv) ``addmm`` is
# faster. (Plain MKL ``addmm``, not ``nn.linear``'s oneDNN route: with weights not pre-packed,
# oneDNN re-lays them every call and streamed 1.8x slower here; pre-packed it was within
# 0.9-1.1x of ``addmm`` at these 1-320 rows, measured.)
def _laid_out(module: nn.Module, key: tuple, make) -> Any:
    """``make()``, kept on ``module`` until ``key`` (its weights' versions and pointers) changes:
    streams of one model share their kernels (memory, and caches when several streams run)."""
    cached = module.__dict__.get("_stream_layout")
    if cached is None or cached[0] != key:
        cached = (key, make())
        module.__dict__["_stream_layout"] = cached
    return cached[1]


class _SnakeStream:
    def __init__(self, m: Snake) -> None:
        def make():
            alpha = m.alpha.detach().reshape(-1)
            return alpha, (alpha + 1e-9).reciprocal()

        self.alpha, self.inv = _laid_out(m, params_key(m.alpha), make)

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The offline formula (same ops, same order); ``out``: write the result there."""
        y = torch.mul(x, self.alpha) if out is None else torch.mul(x, self.alpha, out=out)
        return y.sin_().pow_(2).mul_(self.inv).add_(x)


class _ConvStream:
    def __init__(self, layer: Conv, act: _SnakeStream | None = None,
                 one_row: bool = False) -> None:
        conv, c_out = layer.conv, layer.c_out

        def make():
            k = conv.kernel().detach()  # [C_out, C_in, taps]
            # GEMM operand [taps*C_in, C_out] (rows: tap-major, as the windows are laid out), or
            # its transpose [C_out, taps*C_in] for the GEMV of tall one-row layers
            kt = k.permute(0, 2, 1).reshape(c_out, -1)
            gemv = one_row and kt.shape[1] >= 4 * c_out  # tall: the dot-product GEMV wins
            bias = conv.bias.detach() if conv.bias is not None else k.new_zeros(c_out)
            return gemv, kt.contiguous() if gemv else kt.t().contiguous(), bias, k.shape[2]

        bias_key = () if conv.bias is None else params_key(conv.bias)
        key = conv.weights_key() + bias_key + (one_row,)
        self.one_row, self.kernel, self.bias, self.taps = _laid_out(layer, key, make)
        self.c_out = c_out
        self.span, self.stride, self.dilation = layer.span, layer.stride, conv.dilation
        self.pad = layer.pad
        self.act = act  # applied while writing the input into the window buffer
        self.buf: torch.Tensor | None = None  # [B, capacity, C_in]; live inputs in [start, end)
        self.start = self.end = 0

    def _gemm(self, cols: torch.Tensor) -> torch.Tensor:
        if not self.one_row:
            return torch.addmm(self.bias, cols, self.kernel)
        if cols.shape[0] == 1:
            return torch.addmv(self.bias, self.kernel, cols[0])[None]
        return torch.addmm(self.bias, cols, self.kernel.t())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        if self.span == 1 and self.stride == 1:  # 1x1 conv: no history
            if self.act is not None:
                x = self.act(x)
            return self._gemm(x.reshape(b * t, c)).view(b, t, -1)
        if self.buf is None:
            self.buf = x.new_zeros(b, 4 * (self.pad + t) + 64, c)  # the causal zeros come first
            self.end = self.pad
        if self.end + t > self.buf.shape[1]:  # move the live tail to the front (grow if needed)
            live = self.buf[:, self.start : self.end].clone()
            if live.shape[1] + t > self.buf.shape[1]:
                self.buf = x.new_empty(b, 2 * (live.shape[1] + t), c)
            self.buf[:, : live.shape[1]] = live
            self.start, self.end = 0, live.shape[1]
        slot = self.buf[:, self.end : self.end + t]
        if self.act is None:
            slot.copy_(x)
        else:
            self.act(x, out=slot)
        self.end += t
        avail = self.end - self.start
        n = (avail - self.span) // self.stride + 1 if avail >= self.span else 0
        if n == 0:
            return x.new_empty(b, 0, self.c_out)
        cap = self.buf.shape[1]
        cols = self.buf.as_strided(  # [B, n, taps, C_in]: window i, tap j = start + i*s + j*d
            (b, n, self.taps, c), (cap * c, self.stride * c, self.dilation * c, 1),
            self.buf.storage_offset() + self.start * c)
        self.start += n * self.stride
        return self._gemm(cols.reshape(b * n, -1)).view(b, n, -1)


class _ConvTransposeStream:
    def __init__(self, layer: ConvTranspose) -> None:
        conv = layer.conv

        def make():
            k = conv.kernel().detach()  # [C_in, C_out, 2s] -> [C_in, 2s*C_out]
            return k.permute(0, 2, 1).reshape(k.shape[0], -1).contiguous(), conv.bias.detach()

        key = conv.weights_key() + params_key(conv.bias)
        self.kernel, self.bias = _laid_out(layer, key, make)
        self.s, self.c_out = layer.stride, layer.c_out
        self.tail: torch.Tensor | None = None  # [B, s, C_out]: the last frame's overlap

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if n == 0:
            return x.new_empty(b, 0, self.c_out)
        y = torch.mm(x.reshape(b * n, c), self.kernel).view(b, n, 2 * self.s, self.c_out)
        out = y[:, :, : self.s] + self.bias  # frame f's own s samples ...
        out[:, 1:] += y[:, :-1, self.s :]  # ... plus the overlap of frame f - 1
        if self.tail is not None:
            out[:, 0] += self.tail
        self.tail = y[:, -1, self.s :]
        return out.view(b, n * self.s, self.c_out)


class _ResidualStream:
    def __init__(self, unit: ResidualUnit, rate: int) -> None:
        self.plan, _ = _stream_plan(unit.block, rate)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _run_plan(self.plan, x).add_(x) if x.shape[1] else x


def _stream_plan(layers: nn.Sequential, rate: int = 0) -> tuple[list, int]:
    """One streaming callable per layer of ``layers`` (time-major chunks in and out), a Snake
    folded into the conv after it. ``rate``: rows per frame at the input (0: not tracked); returns
    the plan and the rate at its output."""
    plan: list = []
    mods = list(layers)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, Snake) and i + 1 < len(mods) and isinstance(mods[i + 1], Conv):
            m, act = mods[i + 1], _SnakeStream(m)
            i += 1
        else:
            act = None
        if isinstance(m, Conv):
            rate = rate // m.stride if rate else 0
            plan.append(_ConvStream(m, act, one_row=rate == 1))
        elif isinstance(m, ConvTranspose):
            rate = rate * m.stride if rate else 0
            plan.append(_ConvTransposeStream(m))
        elif isinstance(m, ResidualUnit):
            plan.append(_ResidualStream(m, rate))
        elif isinstance(m, Snake):
            plan.append(_SnakeStream(m))
        elif isinstance(m, nn.ELU):
            plan.append(functools.partial(F.elu, alpha=m.alpha))
        elif isinstance(m, nn.Tanh):
            plan.append(torch.tanh)
        else:
            raise TypeError(f"no streaming rule for layer {type(m).__name__}")
        i += 1
    return plan, rate


def _run_plan(plan: list, x: torch.Tensor) -> torch.Tensor:
    for f in plan:
        x = f(x)
    return x


class _RVQStream:
    """The residual quantizer of streams on tables laid out once: per level the input
    projection, the l2-normalised codebook with its score bias ``-|e|^2 / 2`` (what
    ``nearest_code`` computes per call) and ``project_out`` of every raw row (the decoded value of
    each code). Same search as ``ResidualVectorQuantizer.encode``; decode is a table lookup."""

    def __init__(self, rvq: nn.Module) -> None:
        cfg = rvq.config
        if not (cfg.l2_normalize and cfg.raw_codebook_rows and cfg.codebook_dim
                and cfg.codebook_dim != cfg.dim):
            raise TypeError("streaming expects DAC's factorised cosine RVQ (dac_rvq_config)")
        self.levels = []
        with torch.no_grad(), fp32_no_autocast(rvq.levels[0].embedding.weight.device.type):
            for level in rvq.levels:
                raw = level.embedding.weight.detach().float()
                e, b = score_weight_and_bias(l2_normalize(raw))
                p_in, p_out = level.project_in, level.project_out
                self.levels.append((
                    p_in.bias.detach().float(), p_in.weight.detach().float().t().contiguous(),
                    b, e.t().contiguous(),
                    torch.addmm(p_out.bias.float(), raw, p_out.weight.float().t()),  # [K, D]
                ))
        # decode: one lookup in the levels' tables stacked ``[Q * K, D]`` at code + level * K
        self.table = torch.cat([lv[4] for lv in self.levels])
        k = self.levels[0][4].shape[0]
        self.offsets = torch.arange(len(self.levels), device=self.table.device) * k

    def encode(self, z: torch.Tensor, depth: int) -> torch.Tensor:
        """``[B, n, D]`` latents -> codes ``[B, n, depth]`` of the first ``depth`` levels."""
        b, n, d = z.shape
        r = z.reshape(b * n, d).float()
        codes = torch.empty(depth, b * n, dtype=torch.long, device=z.device)
        with fp32_no_autocast(z.device.type):
            last = depth - 1
            for i, (b_in, w_in, bias, e, values) in enumerate(self.levels[:depth]):
                x = l2_normalize(torch.addmm(b_in, r, w_in))
                torch.argmax(torch.addmm(bias, x, e), 1, out=codes[i])
                if i < last:
                    r = r - values.index_select(0, codes[i])
        return codes.t().reshape(b, n, -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, n, q]`` (``q <= Q``) -> latents ``[B, n, D]``: the levels' rows summed
        in level order."""
        q = codes.shape[-1]
        rows = F.embedding(codes + self.offsets[:q], self.table)  # [B, n, q, D]
        return rows.sum(2) if q > 1 else rows[:, :, 0]


# ---------------------------------------------------------------------- the codec
@register_model_class
class Codec(ConvRVQCodec):
    """visualtok's streaming audio codec (mono). See the module docstring."""

    config_class = CodecConfig
    encoder_class, decoder_class = Encoder, Decoder
    init_weights = staticmethod(_zero_biases)

    def __init__(self, config: CodecConfig) -> None:
        super().__init__(config)
        self._weights_generation = 0  # bumped by .to() & co.: live streams are then refused

    def _apply(self, fn, recurse: bool = True):
        self._weights_generation = getattr(self, "_weights_generation", 0) + 1
        return super()._apply(fn, recurse)

    def codec_id(self) -> str:
        """Fingerprint of the codebooks (and the config): codes made by another codec, or by this
        architecture with other weights, are refused by ``decode``."""
        h = hashlib.sha1(repr(sorted(vars(self.config).items())).encode())
        for level in self.quantizer.levels:
            h.update(level.embedding.weight.detach().float().cpu().numpy().tobytes())
        return "codec-" + h.hexdigest()[:16]

    # ------------------------------------------------------------------ streaming
    def streaming_encoder(self, n_q: int | None = None) -> StreamingEncoder:
        return StreamingEncoder(self, n_q=n_q)

    def streaming_decoder(self) -> StreamingDecoder:
        return StreamingDecoder(self)


_VERSION = operator.attrgetter("_version")


class StreamState:
    """Per-layer buffers of one stream and the weight tables they use, tied to the model that
    made them and to its weights at that moment: a stream is refused once the model's weights
    changed (``load_state_dict``, an optimiser step, an in-place write, ``.to()``; writes through
    ``.data`` bypass PyTorch's version counters and are not seen)."""

    def __init__(self, model: Codec, kind: str) -> None:
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"StreamState kind must be 'encoder' or 'decoder'; got {kind!r}")
        self.owner = weakref.ref(model)
        self.kind = kind
        self.buffers: dict = {}
        self.batch_size: int | None = None
        self.samples = 0  # samples (encoder) or frames (decoder) fed so far
        parts = (model.encoder, model.quantizer) if kind == "encoder" else (
            model.quantizer, model.decoder)
        self._params = [p for part in parts for p in part.parameters()]
        self._weights = self._fingerprint(model)
        # laid out now, from the weights the fingerprint describes
        layers = model.encoder.layers if kind == "encoder" else model.decoder.layers
        self.buffers["plan"], _ = _stream_plan(layers, model.hop_length if kind == "encoder"
                                               else 1)
        rvq = model.quantizer
        self.buffers["rvq"] = _laid_out(rvq, params_key(*rvq.parameters()), lambda: _RVQStream(rvq))

    def _fingerprint(self, model: Codec) -> tuple[int, int]:
        # versions only grow: their sum changes whenever one does (~30 us for 120 parameters)
        return model._weights_generation, sum(map(_VERSION, self._params))

    def check(self, model: Codec, kind: str) -> None:
        if self.owner() is not model:
            raise ValueError("this streaming state belongs to a different model: make a new "
                             f"Streaming{kind.capitalize()} for this one (states hold per-layer "
                             "buffers of the model that made them)")
        if self.kind != kind:
            raise ValueError(f"this is a {self.kind} streaming state; a {kind} one is needed")
        if self._fingerprint(model) != self._weights:
            raise ValueError(f"the model's weights changed after this {kind} stream started "
                             "(load_state_dict, an optimiser step, an in-place write or .to()): "
                             "its kernels and buffers are stale; start a new "
                             f"Streaming{kind.capitalize()}")

    def check_batch(self, b: int, what: str) -> None:
        if self.batch_size is None:
            self.batch_size = b
        elif b != self.batch_size:
            raise ValueError(f"{what} has batch size {b}, but this stream started with "
                             f"{self.batch_size} (one stream per batch)")


def _check_causal(model: object, what: str) -> Codec:
    if not isinstance(model, Codec):
        raise TypeError(f"{what} needs a visualtok Codec; got {type(model).__name__}")
    if not model.config.causal:
        raise ValueError(f"{what}: this codec is not causal (config.causal=False); streaming "
                         "equals offline only for causal presets, e.g. codec_small(causal=True)")
    return model


class StreamingEncoder:
    """Feed audio chunks ``[B, 1, t]`` (any ``t >= 1``) with ``__call__``; each call returns the
    codes ``[B, n, n_q]`` of the frames completed so far (``n`` may be 0). ``flush()`` zero-pads the
    last frame as offline ``encode`` does and returns the remaining codes; the concatenation equals
    ``model.encode(whole).codes`` exactly. The kernels are laid out when the stream starts (here):
    a stream whose model's weights changed since raises ``ValueError``."""

    def __init__(self, model: Codec, n_q: int | None = None,
                 state: StreamState | None = None) -> None:
        self.model = _check_causal(model, "StreamingEncoder")
        self.n_q = model._check_n_q(n_q)
        if state is None:
            state = StreamState(model, "encoder")
        state.check(model, "encoder")
        self.state = state
        self._dtype = model._param_dtype()
        self._plan, self._rvq = state.buffers["plan"], state.buffers["rvq"]

    @torch.no_grad()
    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        self.state.check(self.model, "encoder")
        chunk = check_audio(chunk, self.model.channels, name="chunk")
        self.state.check_batch(chunk.shape[0], "chunk")
        self.state.samples += chunk.shape[-1]
        return self._push(chunk.to(self._dtype))

    def _push(self, x: torch.Tensor) -> torch.Tensor:
        z = _run_plan(self._plan, x.reshape(x.shape[0], -1, 1))  # [B, 1, t] -> [B, t, 1]
        if z.shape[1] == 0:
            return torch.zeros(x.shape[0], 0, self.n_q, dtype=torch.long, device=x.device)
        return self._rvq.encode(z, self.n_q)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """Codes of the last, zero-padded frame (none if the input ended on a frame boundary)."""
        self.state.check(self.model, "encoder")
        hop, n = self.model.hop_length, self.state.samples
        pad = math.ceil(n / hop) * hop - n
        b = self.state.batch_size or 1
        x = torch.zeros(b, 1, pad, dtype=self._dtype, device=self.model._device())
        self.state.samples += pad
        return self._push(x)


class StreamingDecoder:
    """Feed codes ``[B, n, q]`` (any ``n >= 1`` frames) with ``__call__``; each call returns the
    audio ``[B, 1, n * hop]`` of those frames, equal to offline ``decode`` of the whole sequence
    up to float rounding (1e-5). Kernels and code tables are laid out when the stream starts
    (here): a stream whose model's weights changed since raises ``ValueError``."""

    def __init__(self, model: Codec, state: StreamState | None = None) -> None:
        self.model = _check_causal(model, "StreamingDecoder")
        if state is None:
            state = StreamState(model, "decoder")
        state.check(model, "decoder")
        self.state = state
        self._n_q: int | None = None
        self._dtype = model._param_dtype()
        self._plan, self._rvq = state.buffers["plan"], state.buffers["rvq"]

    @torch.no_grad()
    def __call__(self, codes: Any) -> torch.Tensor:
        from .base import AudioCodes

        self.state.check(self.model, "decoder")
        if isinstance(codes, AudioCodes):
            self.model._check_codec_id(codes)
            codes = codes.codes
        c = self.model.check_codes(codes).to(self._rvq.table.device)
        self.state.check_batch(c.shape[0], "codes")
        if self._n_q is None:
            self._n_q = c.shape[-1]
        elif c.shape[-1] != self._n_q:
            raise ValueError(f"codes have {c.shape[-1]} levels, but this stream started with "
                             f"{self._n_q} (keep n_q fixed within a stream)")
        self.state.samples += c.shape[1]
        z = self._rvq.decode(c).to(self._dtype)  # [B, n, D]
        y = _run_plan(self._plan, z)  # [B, n * hop, 1]
        return y.reshape(y.shape[0], 1, -1).float()


# ---------------------------------------------------------------------- presets
CODEC_PRESETS: dict[str, dict[str, Any]] = {
    "codec_tiny": dict(encoder_dim=8, decoder_dim=128, latent_dim=64, n_codebooks=4,
                       codebook_size=256, dead_code_threshold=0.1),
    "codec_small": dict(),  # the class defaults: 16 kHz, hop 320 (50 Hz), 8 x 1024 = 4 kbps
    "codec_lm": dict(ratios=(2, 4, 8, 10), n_codebooks=4),  # hop 640: 25 Hz, 1 kbps
}


def _preset(name: str, overrides: dict[str, Any]) -> Codec:
    from ..config import config_from_dict

    return Codec(config_from_dict(CodecConfig, {**CODEC_PRESETS[name], **overrides}))


@register_model(task="audio-codec")
def codec_tiny(**overrides: Any) -> Codec:
    """16 kHz, hop 320, 4 x 256 codes (1.6 kbps); for tests. ``causal=True`` streams."""
    return _preset("codec_tiny", overrides)


@register_model(task="audio-codec")
def codec_small(**overrides: Any) -> Codec:
    """16 kHz, hop 320 (50 Hz), 8 x 1024 codes = 4 kbps. ``causal=True`` streams."""
    return _preset("codec_small", overrides)


@register_model(task="audio-codec")
def codec_lm(**overrides: Any) -> Codec:
    """16 kHz, hop 640 (25 Hz), 4 x 1024 codes = 1 kbps: short code sequences for the GPT."""
    return _preset("codec_lm", overrides)
