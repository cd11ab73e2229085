"""``VideoTokenizerTask``: train a video tokenizer (``TiTok3D``) with the tokenizer objective.

The same loop and losses as ``TokenizerTask`` (reconstruction + quantizer terms, nested dropout
over a 1D token prefix, RobusTok perturbation), fed ``batch["video"] [B, T, 3, H, W]`` from the
``video`` dataset. The image-only terms (2D perceptual loss, PatchGAN, proxy-code teacher) are
refused rather than applied frame by frame silently. Logged media: a frame grid of each clip above
its reconstruction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .task import StepOutput, register_task
from .tokenizer_task import TokenizerLossConfig, TokenizerTask

__all__ = ["VideoTokenizerTask"]


@register_task("video_tokenizer")
class VideoTokenizerTask(TokenizerTask):
    loss_config_class = TokenizerLossConfig

    def __init__(self, model: nn.Module, loss_config: TokenizerLossConfig,
                 train_config: TrainConfig) -> None:
        c = loss_config
        used = [k for k, v in (("perceptual_weight", c.perceptual_weight),
                               ("gan_weight", c.gan_weight), ("proxy_teacher", c.proxy_teacher))
                if v]
        if used:
            raise ValueError(f"video_tokenizer does not support loss option(s) {used} (image-only)")
        if train_config.data.token_file:
            raise ValueError("video_tokenizer does not support data.token_file")
        if getattr(model, "num_frames", None) is None:
            raise TypeError(f"video_tokenizer needs a video tokenizer; got {type(model).__name__}")
        super().__init__(model, loss_config, train_config)

    def compute_loss(self, name: str, batch: Any, step: int) -> StepOutput:
        return super().compute_loss(name, _as_image_batch(batch), step)

    @torch.no_grad()
    def log_media(self, batch: Any) -> dict[str, torch.Tensor]:
        from ..video.io import frame_grid

        video = batch["video"][:4]
        recon = self.model.reconstruct(video)
        rows = torch.stack([video, recon], 1).flatten(0, 1)  # clip, reconstruction, clip, ...
        return {"reconstruction": frame_grid(rows, max_frames=8)[None]}


def _as_image_batch(batch: Any) -> Any:
    if not isinstance(batch, dict) or "video" not in batch:
        raise ValueError("video_tokenizer batches must hold 'video' [B, T, 3, H, W] "
                         "(data.type: video)")
    return {**batch, "image": batch["video"]}
