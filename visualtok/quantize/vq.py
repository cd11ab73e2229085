"""Vector quantization (VQ-VAE, van den Oord et al. 2017) with the options that made it train.

* codebook loss ``mse(e, sg(z))`` plus commitment ``beta * mse(z, sg(e))`` (TiTok, VQGAN), or EMA
  codebook updates with Laplace-smoothed counts (``ema=True``, Razavi et al. 2019);
* l2-normalised (cosine) lookup, ``l2_normalize=True``: the stored rows stay raw and are normalised
  at lookup, as in TiTok's official quantizer (state key ``embedding.weight``, codebook 4096 x 12);
* factorized codes (``codebook_dim``): project ``D -> codebook_dim`` before the lookup and back
  after   (Improved VQGAN / DAC);
* ``raw_codebook_rows`` (with ``l2_normalize``): the search runs on normalised vectors, but the
  output, ``decode`` and the losses use the raw projected latents and raw codebook rows (DAC);
* k-means initialisation on the first training batch or through ``calibrate(batches)``;
* dead-code restart: codes whose EMA usage falls below ``dead_code_threshold`` are replaced by
  random vectors of the current batch;
* the rotation trick (Fifer et al. 2024) instead of the straight-through gradient;
* bounded nearest-neighbour search (``search.nearest_code``): cache-sized tiles on CPU, at most
  ``2**26`` scores at once on accelerators, never a one-hot;
* code counts by ``index_add_`` (unlike ``bincount``, no read of the index range on CUDA);
  training-batch statistics (perplexity, usage, dead codes) are device tensors.

In eval mode the output is the codebook row itself, so ``forward(z).z_q == decode(encode(z))``
exactly. In distributed training the EMA statistics are all-reduced and the k-means / restart
decisions are broadcast from rank 0; whether a process group exists is checked at every call.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.linear import Linear
from ..registry import register_quantizer
from .base import Quantizer, check_latents
from .config import QuantizerConfig
from .distributed import all_reduce_sum_, broadcast_, is_distributed
from .kmeans import kmeans
from .layout import CodeLayout
from .search import check_strength, l2_normalize, nearest_code, token_mask, topk_nearest

__all__ = ["VectorQuantizer", "rotate_to"]

_EMA_EPS = 1e-5


def rotate_to(x: torch.Tensor, e: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rotation trick: map ``x [N, d]`` onto ``e [N, d]`` by a rotation and rescaling held constant.

    Forward value is ``e`` (up to rounding); the gradient w.r.t. ``x`` is ``lambda * R^T g`` where
    ``R`` rotates ``x/|x|`` onto ``e/|e|`` and ``lambda = |e|/|x|`` (Fifer et al. 2024, Eq. 4).
    """
    e = e.detach()
    with torch.no_grad():
        x_norm = x.norm(dim=-1, keepdim=True).clamp(min=eps)
        e_norm = e.norm(dim=-1, keepdim=True).clamp(min=eps)
        u = x / x_norm
        q = e / e_norm
        w = l2_normalize(u + q, eps=eps)
        scale = e_norm / x_norm
    # R x = x - 2 w (w.x) + 2 q (u.x), with u, q, w, scale treated as constants.
    rx = x - 2 * w * (w * x).sum(-1, keepdim=True) + 2 * q * (u * x).sum(-1, keepdim=True)
    return scale * rx


def _mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``mse_loss(a, b)``; with ``weight [N]`` each row's mean squared error is weighted and the
    result divided by ``N`` (masked rows count as zeros, DAC's per-sample loss masking)."""
    if weight is None:
        return F.mse_loss(a, b)
    return ((a - b).pow(2).mean(-1) * weight).mean()


@torch.no_grad()
def _perplexity(counts: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``exp(-sum p ln p)`` of code ``counts`` over ``num_tokens`` (with ``0 ln 0 = 0``)."""
    return torch.special.entr(counts / num_tokens).sum().exp()


@torch.no_grad()
def _usage(counts: torch.Tensor) -> torch.Tensor:
    """Fraction of codes with a nonzero count."""
    return counts.count_nonzero() / counts.numel()


@register_quantizer("vq")
class VectorQuantizer(Quantizer):
    """Codebook VQ. Codes ``[B, *S, 1]`` with layout ``(K,)``; see the module docstring."""

    loss_keys = ("total", "commitment", "codebook")

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__(config)
        k = config.codebook_size
        cdim = config.codebook_dim or config.dim
        self.codebook_dim = cdim
        factorized = cdim != config.dim
        self.project_in = Linear(config.dim, cdim) if factorized else nn.Identity()
        self.project_out = Linear(cdim, config.dim) if factorized else nn.Identity()
        self.embedding = nn.Embedding(k, cdim)
        self.embedding.weight.data.uniform_(-1.0 / k, 1.0 / k)  # TiTok / taming init
        if config.ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("embed_avg", self.embedding.weight.data.clone())
        if config.ema or config.dead_code_threshold > 0:
            # EMA of per-batch code counts; starts at 1 so no code is "dead" before it had a chance.
            self.register_buffer("cluster_size", torch.ones(k))
        if config.kmeans_init:
            self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("_one", torch.ones(()), persistent=False)  # for _code_counts
        self.layout = CodeLayout((k,), kind="vq")

    # ------------------------------------------------------------------ codebook access
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def codebook(self) -> torch.Tensor:
        """Lookup codebook ``[K, codebook_dim]`` (l2-normalised rows when ``l2_normalize``)."""
        w = self.embedding.weight
        return l2_normalize(w) if self.config.l2_normalize else w

    def _to_codebook_space(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project_in(z)
        return l2_normalize(x) if self.config.l2_normalize else x

    def _value_rows(self) -> torch.Tensor:
        """The rows a code stands for: the raw rows with ``raw_codebook_rows``, else the lookup
        codebook."""
        return self.embedding.weight if self.config.raw_codebook_rows else self.codebook()

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """fp32 ``[N, D]`` -> nearest code ``[N]`` (no state update, no gradient)."""
        with torch.no_grad():
            x = self._to_codebook_space(z)
            return nearest_code(x, self.codebook(), self.config.chunk_size)

    # ------------------------------------------------------------------ protocol
    def _quantize(self, z: torch.Tensor, token_weight: torch.Tensor | None = None):
        """See ``Quantizer._quantize``; ``token_weight [N]`` (0/1, RVQ per-sample dropout) masks
        each token's share of the losses (their mean keeps the denominator ``N``)."""
        cfg = self.config
        x_in = self.project_in(z)  # [N, c]
        x = l2_normalize(x_in) if cfg.l2_normalize else x_in  # the search space
        if self.training and cfg.kmeans_init and not bool(self.initted):
            self._init_from(x.detach())
        if self.training and cfg.dead_code_threshold > 0:
            # before the lookup: the codebook must not change after this step's graph used it
            self._restart_dead_codes((x_in if cfg.raw_codebook_rows else x).detach())
        codebook = self.codebook()
        idx = nearest_code(x.detach(), codebook.detach(), cfg.chunk_size)  # [N]
        if cfg.raw_codebook_rows:  # values: raw latents and raw rows (DAC)
            x, e = x_in, F.embedding(idx, self.embedding.weight)
        else:
            e = F.embedding(idx, codebook)  # [N, c]; grads reach the codebook unless EMA
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        if self.training:
            counts = self._code_counts(idx)  # this process's, before any all-reduce
            stats = {"perplexity": _perplexity(counts, max(idx.shape[0], 1)),
                     "usage": _usage(counts)}
            commitment = cfg.beta * _mse(x, e.detach(), token_weight)
            if cfg.ema:  # no codebook loss: "codebook" is filled with zeros by the caller
                losses = {"commitment": commitment, "total": commitment}
            else:
                codebook_loss = _mse(e, x.detach(), token_weight)
                losses = {"commitment": commitment, "codebook": codebook_loss,
                          "total": commitment + codebook_loss}
            x_q = rotate_to(x, e) if cfg.rotation_trick else x + (e - x).detach()
            self._update_state(x.detach(), idx, counts)
        else:
            x_q = e  # the codebook rows themselves: decode(encode(z)) == forward(z).z_q
        if self.training and cfg.dead_code_threshold > 0:  # after the update
            stats["dead_codes"] = (self.cluster_size < cfg.dead_code_threshold).sum().float()
        return self.project_out(x_q), idx.unsqueeze(-1), losses, stats

    def _dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.project_out(F.embedding(codes[:, 0], self._value_rows()))

    @torch.no_grad()
    def _code_counts(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 ``[K]`` histogram of ``idx`` (one ``index_add_``)."""
        ones = self._one.float().expand(idx.shape[0])  # a stored scalar: no fill per call
        return torch.zeros(self.codebook_size, device=idx.device).index_add_(0, idx, ones)

    # ------------------------------------------------------------------ state updates (training)
    @torch.no_grad()
    def _update_state(self, x: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA codebook + usage statistics (all-reduced); dead codes restart at the next step.

        ``counts``: this process's ``_code_counts(idx)``, left as they are (the batch statistics
        use them); a copy is all-reduced.
        """
        cfg = self.config
        if not hasattr(self, "cluster_size"):
            return
        k, decay = self.codebook_size, cfg.ema_decay
        if is_distributed():
            counts = all_reduce_sum_(counts.clone())
        if cfg.ema:
            sums = torch.zeros(k, self.codebook_dim, device=x.device).index_add_(0, idx, x)
            all_reduce_sum_(sums)
            # v <- decay v + (1 - decay) new, both buffers in one fused update
            torch._foreach_lerp_([self.cluster_size, self.embed_avg], [counts, sums], 1 - decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + _EMA_EPS) / (n + k * _EMA_EPS) * n  # Laplace smoothing
            torch.div(self.embed_avg, smoothed.unsqueeze(1), out=self.embedding.weight)
        else:
            self.cluster_size.lerp_(counts, 1 - decay)

    @torch.no_grad()
    def _restart_dead_codes(self, x: torch.Tensor) -> None:
        """Replace codes with EMA usage below the threshold by random batch vectors (rank 0's)."""
        thr = self.config.dead_code_threshold
        dead = self.cluster_size < thr  # identical on every rank: cluster_size is all-reduced
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        pick = torch.randint(x.shape[0], (num_dead,), device=x.device)
        new = x[pick].clone()
        broadcast_(new)
        self.embedding.weight[dead] = new
        self.cluster_size[dead] = thr
        if self.config.ema:
            self.embed_avg[dead] = new * thr

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        """k-means initialisation of the codebook from codebook-space vectors ``x [N, c]``."""
        cfg = self.config
        centroids, counts = kmeans(x, self.codebook_size, cfg.kmeans_iters,
                                   cosine=cfg.l2_normalize, chunk_size=cfg.chunk_size)
        broadcast_(centroids)
        broadcast_(counts)
        self.embedding.weight.copy_(centroids)
        if hasattr(self, "cluster_size"):
            self.cluster_size.copy_(counts.clamp(min=1))
        if cfg.ema:
            self.embed_avg.copy_(centroids * self.cluster_size.unsqueeze(1))
        if hasattr(self, "initted"):
            self.initted.fill_(True)

    @torch.no_grad()
    def calibrate(
        self, batches: Iterable[torch.Tensor], max_vectors: int = 2**18
    ) -> VectorQuantizer:
        """k-means initialise the codebook from latents ``[B, *S, D]`` (up to ``max_vectors``)."""
        xs, total = [], 0
        for z in batches:
            check_latents(z, self.dim)
            x = self._to_codebook_space(z.reshape(-1, self.dim).float())
            xs.append(x)
            total += x.shape[0]
            if total >= max_vectors:
                break
        if not xs:
            raise ValueError("calibrate needs at least one batch of latents [B, *S, D]")
        self._init_from(torch.cat(xs)[:max_vectors])
        return self

    # ------------------------------------------------------------------ perturbation
    @torch.no_grad()
    def nearby_codes(self, idx: torch.Tensor, strength: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """For codes ``idx [M]``: one of each code's ``strength`` nearest codes (itself too)."""
        if idx.numel() == 0:
            return idx
        cb = self.codebook().detach().float()
        cand = topk_nearest(cb[idx], cb, strength, self.config.chunk_size)  # [M, strength]
        gen_device = generator.device if generator is not None else idx.device
        pick = torch.randint(strength, (idx.shape[0], 1), generator=generator, device=gen_device)
        return cand.gather(1, pick.to(idx.device)).squeeze(1)

    @torch.no_grad()
    def perturb(self, codes: torch.Tensor, rate: float, strength: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Each token, with probability ``rate``, becomes one of its ``strength`` nearest codes
        (l2 in the lookup space; the nearest is the code itself, so ``strength=1`` keeps it)."""
        codes = self.layout.validate(codes)
        check_strength(strength, self.codebook_size, "nearest codes to choose from")
        flat = codes.reshape(-1).clone()
        mask = token_mask(flat.shape, rate, generator, flat.device)
        flat[mask] = self.nearby_codes(flat[mask], strength, generator)
        return flat.view_as(codes)
