"""Shared test fixtures.

``../shared`` (parity fixtures, real photos) is found through one setting: ``$VISUALTOK_SHARED``,
defaulting to the ``shared/`` directory beside the repository. Tests that need it skip with a clear
message when it is absent; most tests use generated data or scikit-image's bundled photos.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VISUALTOK_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test saying where it was looked for."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(
            f"{p} not found: set VISUALTOK_SHARED to the shared/ directory (fixtures, data)"
        )
    return p


@pytest.fixture
def fixtures_dir() -> Path:
    return shared_path("fixtures")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module (opt in: ``pytest.mark.usefixtures("one_thread")``).

    Tiny models and matmuls: on a shared, loaded CPU two OpenMP threads spin-wait far slower
    than one. The previous thread count is restored when the module finishes.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def real_photos() -> torch.Tensor:
    """Four real photos from scikit-image, centre-cropped to 128x128.

    Float in [0, 1], shape ``[4, 3, 128, 128]``.
    """
    from skimage import data

    imgs = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        a = getattr(data, name)()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()[None] / 255.0
        imgs.append(
            torch.nn.functional.interpolate(t, size=(128, 128), mode="bilinear", antialias=True)
        )
    return torch.cat(imgs).clamp(0, 1)
