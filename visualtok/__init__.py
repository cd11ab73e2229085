"""visualtok: discrete tokenizers for images, video and audio on one quantizer core.

    >>> import visualtok
    >>> tok = visualtok.load("titok_s128")        # local dir, weights/, or hub (offline first)
    >>> codes = tok.encode(images)                  # images [B, 3, H, W] in [0, 1]
    >>> recon = tok.decode(codes)
"""

__version__ = "0.1.0"

from .hub import CheckpointError, load  # noqa: E402
from .registry import create_model, list_models  # noqa: E402

__all__ = ["__version__", "load", "create_model", "list_models", "CheckpointError"]
