"""k-means (Lloyd) for codebook initialisation, on the chunked nearest-neighbour search.

Spherical when ``cosine=True``: points are assumed unit-norm and centroids are renormalised after
each update, as for l2-normalised (cosine) codebooks.
"""

from __future__ import annotations

import torch

from .search import l2_normalize, nearest_code

__all__ = ["kmeans"]


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    iters: int = 10,
    cosine: bool = False,
    chunk_size: int = 8192,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``x [N, d]`` into ``num_clusters`` centroids.

    Returns ``(centroids [K, d], counts [K])``. Centroids start from random data points (with
    replacement when ``N < K``); a cluster that ends up empty keeps its previous centroid.
    """
    x = x.float()
    n = x.shape[0]
    gen_device = generator.device if generator is not None else x.device
    if n >= num_clusters:
        idx = torch.randperm(n, generator=generator, device=gen_device)[:num_clusters]
    else:
        idx = torch.randint(n, (num_clusters,), generator=generator, device=gen_device)
    centroids = x[idx.to(x.device)].clone()
    counts = torch.zeros(num_clusters, device=x.device)
    for _ in range(max(iters, 1)):
        assign = nearest_code(x, centroids, chunk_size)
        counts = torch.bincount(assign, minlength=num_clusters).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        nonempty = counts > 0
        new = sums / counts.clamp(min=1).unsqueeze(1)
        if cosine:
            new = l2_normalize(new)
        centroids = torch.where(nonempty.unsqueeze(1), new, centroids)
    return centroids, counts
