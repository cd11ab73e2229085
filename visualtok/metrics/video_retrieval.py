"""Labelled proxy scores for video token reduction (no video LLM runs here).

* ``retrieval_accuracy``: each query video is a small token set (e.g. VQToken codes); the gallery
  holds every video's *full* frame-token features (other frames of the same clips). A query scores
  a gallery video by how well its tokens explain that video's tokens: the mean, over the gallery
  tokens, of the best cosine to any query token. Top-1 accuracy = the own video ranks first.
* ``reconstruction_cosine``: mean cosine between a reduced representation's rebuilt feature grid
  and the original features.

These are proxies for "does the reduced video keep what distinguishes it", not the paper's video-QA
accuracy, and are labelled so wherever they are reported.
"""

from __future__ import annotations

import torch

from ..quantize.search import l2_normalize

__all__ = ["set_similarity", "retrieval_accuracy", "reconstruction_cosine"]


def set_similarity(tokens: torch.Tensor, features: torch.Tensor) -> float:
    """Mean over the rows of ``features [L, D]`` of their best cosine to a row of ``tokens``."""
    if tokens.ndim != 2 or features.ndim != 2 or tokens.shape[1] != features.shape[1]:
        raise ValueError(f"tokens [M, D] and features [L, D] must share D; got "
                         f"{tuple(tokens.shape)}, {tuple(features.shape)}")
    sim = l2_normalize(features.float()) @ l2_normalize(tokens.float()).T
    return float(sim.amax(1).mean())


def retrieval_accuracy(
    queries: list[torch.Tensor], gallery: list[torch.Tensor]
) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy of query ``i`` retrieving gallery item ``i``; also the ``[Q, G]`` scores."""
    if len(queries) != len(gallery) or not queries:
        raise ValueError(f"need one gallery item per query; got {len(queries)} and {len(gallery)}")
    scores = torch.tensor([[set_similarity(q, g.reshape(-1, g.shape[-1])) for g in gallery]
                           for q in queries])
    acc = float((scores.argmax(1) == torch.arange(len(queries))).float().mean())
    return acc, scores


def reconstruction_cosine(recon: torch.Tensor, target: torch.Tensor) -> float:
    """Mean cosine between ``recon`` and ``target`` (same shape ``[..., D]``)."""
    if recon.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(recon.shape)} vs {tuple(target.shape)}")
    return float(torch.nn.functional.cosine_similarity(recon.float(), target.float(), -1).mean())
