"""VQToken: extreme token reduction of video features by per-video adaptive vector quantization.

Zhang & Fu, "Neural Discrete Token Representation Learning for Extreme Token Reduction in Video
Large Language Models" (NeurIPS 2025, arXiv:2503.16980); official code Hai-chao-Zhang/VQToken
(BSD-3). The paper feeds LLaVA-OneVision's SigLIP features (27x27 = 729 tokens per frame, projected
to 896-d; 32 frames = 23,328 tokens) through:

1. **Adaptive discrete process**: all T*N frame-token features of one video, l2-normalised, are
   clustered by cosine K-means (K-means++ seeding); K is fixed, or chosen per video by the elbow
   of the distortion curve over a K range.
2. **Codebook** ``B [K, D]``: the mean of each cluster's (normalised) members.
3. **Token hash map** ``M [T, N]``: the cluster id of every grid token, keeping its spatio-temporal
   position. ``B`` + ``M`` is the compressed video (``VQTokenCodes``); ``B[M]`` rebuilds the grid.
4. **VQ-attention** (cross-dynamics): a small transformer turning ``B`` and ``M`` into a fixed
   number of output tokens for the downstream model (``CrossDynamicsAttention``).

The paper reports 0.07% of the tokens (13.08 on average, adaptive) with a 0.66% accuracy drop on
NextQA-MC, and defines **TokDense = Accuracy / Token Count** (§3.1.2, Eq. 2; Table 3: 57.72% with
13.08 tokens -> 4.413), the token count being the tokens fed to the LLM after reduction.

What we fix relative to the release (``VQToken/cluster.py``, ``vq_token.py``):

* the elbow index is offset by the first K of the sweep (the release adds a constant 2 + 2 and
  clamps at 12, so with its K range 12..32 it can only return K in [12, 22]);
* the fixed-K path works (the release calls ``KMeansTorch(n_clusters=..., max_iter=...)``, keyword
  names the class does not take: a TypeError);
* seeding is a ``torch.Generator`` (the release draws from the global RNG), and one K-means++
  chain of length ``K_max`` seeds every K of the sweep (its first K centres), so the sweep is
  one batched pass: no Python loop over clusters, all K share each assignment matmul.

Lloyd steps follow the release exactly (assign by cosine to the normalised centres, update to the
plain mean of the members, an empty cluster keeps its centre, stop when the centres move less than
``tol``), so ``benchmarks/bench_vqtoken.py`` can check equal assignments against the loops.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import Config, NonNegativeFloat, NonNegativeInt, PositiveInt
from ..nn.linear import Linear
from ..nn.vit import Transformer
from ..quantize.search import l2_normalize

__all__ = [
    "VQTokenConfig",
    "VQTokenCodes",
    "KMeansSweep",
    "kmeans_pp_chain",
    "kmeans_sweep",
    "elbow_k",
    "vqtoken_compress",
    "compression_ratio",
    "tok_dense",
    "uniform_pool_tokens",
    "uniform_pool_grid",
    "CrossDynamicsConfig",
    "CrossDynamicsAttention",
    "check_features",
]


@dataclass
class VQTokenConfig(Config):
    """Per-video clustering options (the paper's adaptive setting: K in 12..32, elbow)."""

    min_clusters: PositiveInt = 12  # K range of the adaptive sweep (inclusive)
    max_clusters: PositiveInt = 32
    num_clusters: PositiveInt | None = None  # fixed K (the fixed-length subtask); None = adaptive
    max_iters: PositiveInt = 100  # Lloyd iterations per K (release: 100 in the adaptive path)
    tol: NonNegativeFloat = 1e-4  # stop when ||C_new - C|| < tol (release value)
    seed: NonNegativeInt = 0  # seeds the K-means++ draws when no generator is passed

    def validate(self) -> VQTokenConfig:
        super().validate()
        if self.num_clusters is None and self.min_clusters > self.max_clusters - 2:
            raise ValueError(
                f"VQTokenConfig: the elbow needs >= 3 K values, min_clusters <= max_clusters - 2; "
                f"got min_clusters {self.min_clusters}, max_clusters {self.max_clusters}"
            )
        return self

    def ks(self) -> list[int]:
        if self.num_clusters is not None:
            return [self.num_clusters]
        return list(range(self.min_clusters, self.max_clusters + 1))


def check_features(features: object, dim: int | None = None, name: str = "features"):
    """Validate frame-token features ``[T, N, D]`` (float, finite, T and N >= 1)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [T, N, D]; got {type(features).__name__}")
    if features.ndim != 3 or 0 in features.shape:
        raise ValueError(f"{name} must be [T frames, N tokens per frame, D] with T, N, D >= 1; "
                         f"got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point; got {features.dtype}")
    if dim is not None and features.shape[-1] != dim:
        raise ValueError(f"{name} have dimension {features.shape[-1]}; this model expects {dim}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contain NaN or inf")
    return features


# ---------------------------------------------------------------------------- K-means
def kmeans_pp_chain(
    x: torch.Tensor, k: int, generator: torch.Generator | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """K-means++ seeds: indices ``[k]`` into the rows of unit-norm ``x [N, D]``.

    The first is uniform; each next one is drawn with probability proportional to the squared
    Euclidean distance to the nearest chosen seed, plus ``eps`` (as released). One uniform number
    per draw, inverted through the cumulative weights (float64), so the first ``j`` seeds of a
    chain of length ``k`` are the chain of length ``j``. The running minimum distance is updated
    with one matrix-vector product per seed (the release recomputes all distances per draw).
    """
    n = x.shape[0]
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    idx = torch.empty(k, dtype=torch.long)
    idx[0] = min(int(u[0] * n), n - 1)
    best = torch.full((n,), float("inf"), dtype=torch.float64)
    sq = x.square().sum(1)
    for j in range(1, k):
        i = int(idx[j - 1])  # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c: one matrix-vector product
        d2 = (sq + sq[i] - 2 * (x @ x[i])).clamp_(min=0).double()
        best = torch.minimum(best, d2)
        idx[j] = _inverse_cdf(best + eps, u[j])
    return idx


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> int:
    """Index ``i`` with ``cdf[i-1] <= u * total < cdf[i]`` for non-negative float64 weights."""
    cdf = torch.cumsum(weights, 0)
    i = int(torch.searchsorted(cdf, u * cdf[-1], right=True))
    return min(i, len(weights) - 1)


@dataclass
class KMeansSweep:
    """Result of ``kmeans_sweep`` over ``ks``: per K its labels, centres, distortion, iterations."""

    ks: list[int]
    labels: torch.Tensor  # [S, N] int64
    centroids: torch.Tensor  # [S, K_max, D] (rows >= K are zero)
    distortion: torch.Tensor  # [S] float64: sum ||x - c[label]||^2
    iterations: torch.Tensor  # [S] Lloyd iterations run


@torch.no_grad()
def kmeans_sweep(
    x: torch.Tensor,
    ks: list[int],
    generator: torch.Generator | None = None,
    max_iters: int = 100,
    tol: float = 1e-4,
    seeds: torch.Tensor | None = None,
    margin: float = 1e-5,
) -> KMeansSweep:
    """Cosine K-means (Lloyd, as released) of unit-norm ``x [N, D]`` for every K in ``ks`` at once.

    Every K starts from a prefix of one seed list (``seeds``, default one K-means++ chain), so the
    first assignment of all K is one ``[K_max, N]`` product. After that, a token is rescored for a
    K only when it may have switched cluster (exact bounds in the style of Elkan and Hamerly): a
    unit centre that moves by ``delta`` changes a unit token's cosine to it by at most ``delta``,
    so per (K, token) we keep an upper bound on the distance (``1 - cos``) to its own centre and
    lower bounds on the distance to its ``_RUNNERS_UP`` nearest other centres (one by one) and to
    all the rest (one shared bound), and a token whose own bound beats all others by ``margin``
    (far above fp32 rounding) keeps its cluster. When many (K, token) pairs need it, one fp32 GEMM
    scores all tokens against the centres of every K still running; otherwise each K rescores only
    its own tokens (``index_select`` + a small GEMM). Each K's ranking is one ``argmax`` (the
    release's first-index tie rule) and one ``topk``: no Python loop over clusters. Member sums
    are updated only for tokens that switched (``index_add_``). Each K stops on its own when its
    centres move less than ``tol`` (the release's rule) and leaves the GEMM.
    """
    x = x.float().contiguous()
    n, d = x.shape
    s, kmax = len(ks), max(ks)
    if n < kmax:
        raise ValueError(f"K-means needs at least K_max = {kmax} tokens; got {n}")
    if seeds is None:
        seeds = kmeans_pp_chain(x, kmax, generator)
    xs = l2_normalize(x)  # the release normalises again before scoring; so do we
    ks_t = torch.tensor(ks)
    offsets = torch.cumsum(ks_t, 0) - ks_t
    total = int(ks_t.sum())
    block = torch.repeat_interleave(torch.arange(s), ks_t)  # [sum K]: which K a centre belongs to
    within = torch.arange(total) - offsets[block]  # [sum K]: its index inside its K
    cent = x[seeds[within]]  # [sum K, D]: K's centres are the first K seeds
    cn = l2_normalize(cent)
    st = _Bounds.empty(s, n)
    labels = st.labels
    active = torch.ones(s, dtype=torch.bool)
    iters = torch.zeros(s, dtype=torch.long)
    sums = counts = None  # per-centre member sums and counts, from the first assignment on
    for it in range(max_iters):
        act = active.nonzero().squeeze(1).tolist()
        moved = []  # per K: (K index, tokens that switched, their new and old labels)
        assign = functools.partial(st.assign, moved)

        if it == 0:  # every K starts from a prefix of the same seeds: one [N, K_max] product
            cos_t = l2_normalize(x[seeds]) @ xs.T  # [K_max, N]
            for i in act:
                assign(i, None, cos_t[: ks[i]].T.contiguous())
        else:
            need = st.own_ub + margin >= torch.minimum(st.cand_lb.amin(2), st.rest_lb)  # [S, N]
            counts_need = need.sum(1).tolist()
            if sum(counts_need[i] for i in act) * 10 > 3 * n * len(act):  # many: one GEMM, all K
                cos_t = cn[active[block]] @ xs.T  # [sum K_a, N]: each K's rows contiguous
                start = 0
                for i in act:
                    assign(i, None, cos_t[start : start + ks[i]].T.contiguous())
                    start += ks[i]
            else:  # K by K: all tokens if most of this K's need it, else only those
                for i in act:
                    if counts_need[i] == 0:
                        continue
                    c_i = cn[offsets[i] : offsets[i] + ks[i]]
                    if counts_need[i] * 5 > 3 * n:
                        assign(i, None, xs @ c_i.T)
                    else:
                        rows = need[i].nonzero().squeeze(1)
                        assign(i, rows, xs.index_select(0, rows) @ c_i.T)
        iters += active.long()
        if it == 0:
            sums = _member_sums(x, labels, offsets, total)
            counts = torch.bincount((offsets[:, None] + labels).flatten(), minlength=total)
        elif moved:
            si = torch.cat([torch.full_like(m[1], m[0]) for m in moved])
            ni, new_l, old_l = (torch.cat(v) for v in list(zip(*moved))[1:])
            dst, src = offsets[si] + new_l, offsets[si] + old_l
            xm = x.index_select(0, ni)
            sums.index_add_(0, dst, xm).index_add_(0, src, xm, alpha=-1)
            counts += torch.bincount(dst, minlength=total) - torch.bincount(src, minlength=total)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], cent)
        shift = torch.zeros(s).index_add_(0, block, (cent - new).square().sum(1)).sqrt()
        move = active & ~(shift < tol)
        if bool(move.any()):
            cent = torch.where(move[block][:, None], new, cent)
            cn_new = l2_normalize(cent)
            delta = (cn_new - cn).norm(dim=1)  # how far each normalised centre moved
            cn = cn_new
            dk = torch.zeros(s, max(kmax, _RUNNERS_UP + 2))  # room for padded runners-up
            dk[block, within] = delta  # [S, K_max]
            st.own_ub += dk.gather(1, labels)
            st.cand_lb -= dk[:, None, :].expand(s, n, dk.shape[1]).gather(2, st.cand)
            st.rest_lb -= dk.amax(1, keepdim=True)
        active = move
        if not bool(active.any()):
            break
    centroids = torch.zeros(s, kmax, d)
    centroids[block, within] = cent
    # sum ||x - c||^2 = sum (|x|^2 - 2 x.c + |c|^2) with each token's own centre
    flat = offsets[:, None] + labels
    dots = (x @ cent.T).gather(1, flat.T)  # [N, S]
    err = (x.square().sum(1, keepdim=True) - 2 * dots + cent.square().sum(1)[flat].T)
    return KMeansSweep(list(ks), labels, centroids, err.double().sum(0), iters)


_INF = float("inf")
_RUNNERS_UP = 4  # per (K, token): runners-up bounded one by one; the rest share one bound


@dataclass
class _Bounds:
    """Per (K, token) of a sweep: the label and the bounds that decide whether to rescore it."""

    labels: torch.Tensor  # [S, N] int64
    own_ub: torch.Tensor  # [S, N] upper bound: distance (1 - cos) to the own centre
    cand: torch.Tensor  # [S, N, R] the runners-up at the last rescoring
    cand_lb: torch.Tensor  # [S, N, R] lower bounds: distance to each runner-up
    rest_lb: torch.Tensor  # [S, N] lower bound: distance to every other centre

    @classmethod
    def empty(cls, s: int, n: int) -> _Bounds:
        r = _RUNNERS_UP
        return cls(torch.zeros(s, n, dtype=torch.long), torch.full((s, n), _INF),
                   torch.zeros(s, n, r, dtype=torch.long), torch.full((s, n, r), -_INF),
                   torch.full((s, n), -_INF))

    def assign(self, moved: list, i: int, rows: torch.Tensor | None, cos: torch.Tensor) -> None:
        """Write K ``i``'s argmax and bounds for ``rows`` (None: all) from ``cos [R, K]``; append
        ``(i, tokens, new labels, old labels)`` of the tokens that switched to ``moved``."""
        own, d_own, ci, cd, rd = _rank(cos)
        sel = (i,) if rows is None else (i, rows)
        old = self.labels[sel].clone()  # (i,) is a view
        self.labels[sel], self.own_ub[sel], self.rest_lb[sel] = own, d_own, rd
        self.cand[sel], self.cand_lb[sel] = ci, cd
        sw = (own != old).nonzero().squeeze(1)
        if sw.numel():
            moved.append((i, sw if rows is None else rows[sw], own[sw], old[sw]))


def _rank(cos: torch.Tensor):
    """Per row of ``cos [R, K]``: the nearest centre (argmax, first on ties, as the release's
    argmin of ``1 - cos``) and its distance, the runners-up and their distances, and the next
    distance (a lower bound for every other centre); missing runners-up get distance ``inf``."""
    own = cos.argmax(1)
    need = _RUNNERS_UP + 2
    if cos.shape[1] < need:
        cos = torch.cat([cos, cos.new_full((cos.shape[0], need - cos.shape[1]), -_INF)], 1)
    v, i = cos.topk(need, dim=1)
    dist = 1 - v
    # an exact tie at the top (topk's first index is not the argmax): leave the bounds open
    rest = torch.where(i[:, 0] == own, dist[:, -1], -_INF)
    return own, dist[:, 0], i[:, 1:-1], dist[:, 1:-1], rest


def _member_sums(x: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor, total: int):
    """Per-centre sums of members ``[sum K, D]`` for labels ``[S, N]``: one one-hot matmul."""
    flat = (offsets[:, None] + labels).flatten()
    onehot = torch.zeros(total, x.shape[0])
    onehot[flat, torch.arange(x.shape[0]).repeat(labels.shape[0])] = 1.0
    return onehot @ x


def elbow_k(ks: list[int], distortion: torch.Tensor) -> int:
    """K at the elbow: the interior K with the largest second difference of the distortion.

    ``second[j] = D[j] - 2 D[j+1] + D[j+2]`` is the curvature at ``ks[j + 1]``; the release
    dropped this offset.
    """
    if len(ks) < 3:
        raise ValueError(f"the elbow needs >= 3 K values; got {ks}")
    dist = torch.as_tensor(distortion, dtype=torch.float64)
    second = dist[:-2] - 2 * dist[1:-1] + dist[2:]
    return ks[int(second.argmax()) + 1]


# ---------------------------------------------------------------------------- compressed video
@dataclass
class VQTokenCodes:
    """A compressed video: ``codes [K, D]`` (cluster means) + ``hash_map [T, N]`` (cluster ids)."""

    codes: torch.Tensor
    hash_map: torch.Tensor
    distortion: torch.Tensor | None = None  # [S] distortion curve of the sweep (adaptive)
    ks: list[int] | None = None

    @property
    def num_clusters(self) -> int:
        return self.codes.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens fed downstream: the K code vectors (the paper's "Token Count")."""
        return self.num_clusters

    def reconstruct(self) -> torch.Tensor:
        """The feature grid ``[T, N, D]``: each position takes its cluster's code vector."""
        return self.codes[self.hash_map]

    def compression_ratio(self) -> float:
        """Tokens kept / tokens in (the paper's "Token%" as a fraction: 32 / 23,328 = 0.14%)."""
        return compression_ratio(self.hash_map.numel(), self.num_tokens)

    def save(self, path: str | Path) -> Path:
        """Write ``codes`` and ``hash_map`` (int32 when K fits) to a safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"codes": self.codes.contiguous(), "hash_map": self.hash_map.int().contiguous()}
        meta = {"format": "visualtok-vqtoken", "version": "1", "ks": json.dumps(self.ks)}
        if self.distortion is not None:
            tensors["distortion"] = self.distortion.contiguous()
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> VQTokenCodes:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VQToken file not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                data = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
        if meta.get("format") != "visualtok-vqtoken" or not {"codes", "hash_map"} <= set(data):
            raise ValueError(f"{path} is not a VQToken file (needs codes + hash_map tensors and "
                             f"format metadata 'visualtok-vqtoken')")
        codes, hmap = data["codes"], data["hash_map"].long()
        if codes.ndim != 2 or hmap.ndim != 2 or hmap.numel() == 0:
            raise ValueError(f"{path}: codes must be [K, D] and hash_map [T, N]; got "
                             f"{tuple(codes.shape)}, {tuple(hmap.shape)}")
        if int(hmap.min()) < 0 or int(hmap.max()) >= codes.shape[0]:
            raise ValueError(f"{path}: hash_map ids must lie in [0, {codes.shape[0]})")
        ks = json.loads(meta.get("ks", "null"))
        return cls(codes, hmap, data.get("distortion"), ks)


def vqtoken_compress(
    features: torch.Tensor,
    config: VQTokenConfig | None = None,
    generator: torch.Generator | None = None,
) -> VQTokenCodes:
    """Compress one video's frame-token features ``[T, N, D]`` to codes + hash map.

    Adaptive K (default): the elbow of the distortion over ``min..max_clusters``; fixed K with
    ``config.num_clusters``. ``generator`` defaults to one seeded with ``config.seed``.
    """
    cfg = (config or VQTokenConfig()).validate()
    feats = check_features(features)
    t, n, d = feats.shape
    ks = cfg.ks()
    if t * n < max(ks):
        raise ValueError(f"{t * n} tokens cannot form {max(ks)} clusters")
    if generator is None:
        generator = torch.Generator().manual_seed(cfg.seed)
    x = l2_normalize(feats.detach().float().reshape(t * n, d).cpu())
    sweep = kmeans_sweep(x, ks, generator, cfg.max_iters, cfg.tol)
    k = ks[0] if cfg.num_clusters is not None else elbow_k(ks, sweep.distortion)
    i = ks.index(k)
    labels = sweep.labels[i]
    # codebook: mean of each cluster's normalised members (the paper's Eq. 4, as released);
    # a cluster left empty (possible after the last update) keeps its centre
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, d).index_add_(0, labels, x)
    codes = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None],
                        sweep.centroids[i, :k])
    distortion = sweep.distortion if cfg.num_clusters is None else None
    return VQTokenCodes(codes.to(features.dtype), labels.view(t, n), distortion, ks)


def compression_ratio(original_tokens: int, kept_tokens: int) -> float:
    """``kept / original`` (e.g. 32 / 23,328 = 0.00137, the paper's 0.14%)."""
    if original_tokens < 1 or kept_tokens < 0:
        raise ValueError(f"token counts must be positive; got {original_tokens}, {kept_tokens}")
    return kept_tokens / original_tokens


def tok_dense(accuracy: float, token_count: float) -> float:
    """TokDense = Accuracy / Token Count (arXiv:2503.16980 §3.1.2, Eq. 2).

    ``accuracy`` in percent, as in the paper's tables (57.72 with 13.08 tokens -> 4.413).
    """
    if not token_count > 0:
        raise ValueError(f"token_count must be > 0; got {token_count}")
    return accuracy / token_count


def uniform_pool_tokens(features: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Baseline reducer: ``[T, N, D]`` -> ``[num_tokens, D]`` by average pooling over contiguous,
    near-equal chunks of the flattened (time-major) token sequence."""
    feats = check_features(features)
    t, n, d = feats.shape
    if not 1 <= num_tokens <= t * n:
        raise ValueError(f"num_tokens must be in [1, {t * n}]; got {num_tokens}")
    flat = feats.reshape(t * n, d).float()
    group = _pool_groups(t * n, num_tokens)
    sums = torch.zeros(num_tokens, d).index_add_(0, group, flat)
    return sums / torch.bincount(group, minlength=num_tokens)[:, None]


def _pool_groups(length: int, num_tokens: int) -> torch.Tensor:
    return torch.arange(length) * num_tokens // length


def uniform_pool_grid(tokens: torch.Tensor, num_frames: int, tokens_per_frame: int):
    """Rebuild ``[T, N, D]`` from ``uniform_pool_tokens``: each position takes its chunk's mean."""
    group = _pool_groups(num_frames * tokens_per_frame, tokens.shape[0])
    return tokens[group].view(num_frames, tokens_per_frame, -1)


# ---------------------------------------------------------------------------- VQ-attention
@dataclass
class CrossDynamicsConfig(Config):
    """Constructor arguments of ``CrossDynamicsAttention``."""

    feature_dim: PositiveInt = 896  # D of the codes / frame features
    num_frames: PositiveInt = 32  # T of the hash map (max)
    tokens_per_frame: PositiveInt = 729  # N of the hash map
    width: PositiveInt = 256
    depth: PositiveInt = 1  # the paper: one layer
    heads: PositiveInt = 8
    num_output_tokens: PositiveInt = 32  # fixed number of tokens out
    decoder_depth: PositiveInt = 1  # reconstruction head (training target: the frame features)

    def validate(self) -> CrossDynamicsConfig:
        super().validate()
        if self.width % self.heads:
            raise ValueError(f"CrossDynamicsConfig.heads {self.heads} must divide width "
                             f"{self.width}")
        return self


class CrossDynamicsAttention(nn.Module):
    """Codes ``[B, K, D]`` + hash map ``[B, T, N]`` -> ``num_output_tokens`` tokens ``[B, M, D]``.

    Context: one token per code (its vector), and one *dynamics* token per frame summarising where
    every code sits in it (the mean over positions of an embedding of the position plus the code
    there: unlike the release, which projects the raw integer ids of a hash-map row as if they
    were features, this does not depend on the arbitrary cluster numbering). M learned queries
    read the context through the library's ViT blocks (TiTok-style: queries appended to the
    sequence, their outputs kept). ``reconstruct`` decodes the M tokens back to the feature grid
    (one position query per grid cell, frame by frame), the training target here, since no video
    LLM runs in this project. Codes of different videos may have different K: pass a
    ``code_mask [B, K]`` (True = real code).
    """

    def __init__(self, config: CrossDynamicsConfig) -> None:
        super().__init__()
        c = self.config = config.validate()
        w = c.width
        self.code_in = Linear(c.feature_dim, w)
        self.pos_frame = nn.Parameter(0.02 * torch.randn(c.num_frames, w))
        self.pos_token = nn.Parameter(0.02 * torch.randn(c.tokens_per_frame, w))
        self.dyn_proj = Linear(w, w)
        self.kind = nn.Parameter(0.02 * torch.randn(3, w))  # code / dynamics / query type emb
        self.queries = nn.Parameter(0.02 * torch.randn(c.num_output_tokens, w))
        self.encoder = Transformer(w, c.depth, c.heads)
        self.ln = nn.LayerNorm(w)
        self.out = Linear(w, c.feature_dim)
        self.dec_in = Linear(c.feature_dim, w)
        self.decoder = Transformer(w, c.decoder_depth, c.heads)
        self.dec_ln = nn.LayerNorm(w)
        self.dec_out = Linear(w, c.feature_dim)

    def _check(self, codes, hash_map, code_mask):
        c = self.config
        if codes.ndim != 3 or codes.shape[-1] != c.feature_dim:
            raise ValueError(f"codes must be [B, K, {c.feature_dim}]; got {tuple(codes.shape)}")
        b, k, _ = codes.shape
        if hash_map.ndim != 3 or hash_map.shape[0] != b or hash_map.shape[2] != c.tokens_per_frame:
            raise ValueError(f"hash_map must be [B={b}, T, {c.tokens_per_frame}]; got "
                             f"{tuple(hash_map.shape)}")
        if not 1 <= hash_map.shape[1] <= c.num_frames:
            raise ValueError(f"hash_map has {hash_map.shape[1]} frames; this module takes 1.."
                             f"{c.num_frames}")
        if hash_map.dtype.is_floating_point or int(hash_map.min()) < 0 or int(hash_map.max()) >= k:
            raise ValueError(f"hash_map must hold integer code ids in [0, {k})")
        if code_mask is None:
            code_mask = torch.ones(b, k, dtype=torch.bool, device=codes.device)
        if code_mask.shape != (b, k):
            raise ValueError(f"code_mask must be [B, K] = {(b, k)}; got {tuple(code_mask.shape)}")
        return code_mask

    def forward(self, codes: torch.Tensor, hash_map: torch.Tensor,
                code_mask: torch.Tensor | None = None) -> torch.Tensor:
        code_mask = self._check(codes, hash_map, code_mask)
        b, k, _ = codes.shape
        t = hash_map.shape[1]
        code_tok = self.code_in(codes)  # [B, K, w]
        w = code_tok.shape[-1]
        at = torch.gather(code_tok, 1, hash_map.reshape(b, -1, 1).expand(-1, -1, w))
        at = at.view(b, t, -1, w) + self.pos_token  # the code at each position + the position
        dyn = self.dyn_proj(torch.nn.functional.gelu(at).mean(2)) + self.pos_frame[:t]
        q = self.queries.expand(b, -1, -1) + self.kind[2]
        x = torch.cat([code_tok + self.kind[0], dyn + self.kind[1], q], 1)
        m = self.config.num_output_tokens
        keep = torch.cat([code_mask, code_mask.new_ones(b, t + m)], 1)  # keys that may be read
        attn_mask = keep[:, None, None, :]
        x = self.encoder(x, attn_mask=attn_mask)
        return self.out(self.ln(x[:, -m:]))

    def reconstruct(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Output tokens ``[B, M, D]`` -> feature grid ``[B, T, N, D]`` (frame-wise decoding)."""
        b, m, _ = tokens.shape
        n, w = self.config.tokens_per_frame, self.config.width
        ctx = self.dec_in(tokens)[:, None].expand(b, num_frames, m, w).reshape(b * num_frames, m, w)
        pos = (self.pos_frame[:num_frames, None] + self.pos_token[None]).expand(b, -1, -1, -1)
        x = torch.cat([ctx, pos.reshape(b * num_frames, n, w)], 1)
        x = self.decoder(x)[:, m:]
        return self.dec_out(self.dec_ln(x)).view(b, num_frames, n, -1)

    def loss(self, codes: torch.Tensor, hash_map: torch.Tensor, target: torch.Tensor,
             code_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss: 1 - cosine between the reconstructed and the target ``[B, T, N, D]``."""
        recon = self.reconstruct(self(codes, hash_map, code_mask), hash_map.shape[1])
        if target.shape != recon.shape:
            raise ValueError(f"target must be {tuple(recon.shape)}; got {tuple(target.shape)}")
        return 1 - torch.nn.functional.cosine_similarity(recon, target.to(recon.dtype), -1).mean()

    def config_dict(self) -> dict:
        return asdict(self.config)
