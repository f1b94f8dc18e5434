"""The official HiDe-Prompt clustering of the class statistics: scikit-learn's ``KMeans``.

HiDe-Prompt @0ed43333 (``engines/hide_promtp_wtp_and_tap_engine.py`` ``_compute_mean``,
``engines/hide_tii_engine.py`` the same) runs ``KMeans(n_clusters=args.n_centroids)`` with the
defaults of its pinned scikit-learn 1.0.2 (``n_init=10`` starts, greedy k-means++, ``max_iter=300``,
``tol=1e-4``) on the float32 features, then ``np.mean`` / ``np.var`` of every cluster. The defaults
are passed explicitly here (scikit-learn ≥ 1.4 would run a single start). The official
``random_state`` is numpy's global RNG (seeded by ``--seed``); ours is drawn from the strategy's
generator, so a run is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["sklearn_kmeans"]


def sklearn_kmeans(x: Tensor, k: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(N, D)`` points → centroids ``(k', D)`` and assignments ``(N,)``, ``k' = min(k, N)`` (the
    official code fails below ``k`` samples; we clamp, DECISIONS.md §C7)."""
    try:
        from sklearn.cluster import KMeans
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError("kmeans='sklearn' needs scikit-learn: pip install scikit-learn") from e
    n = x.shape[0]
    k = max(1, min(k, n))
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    data = x.detach().float().cpu().numpy()
    fit = KMeans(n_clusters=k, n_init=10, init="k-means++", max_iter=300, tol=1e-4, random_state=seed).fit(data)
    labels = fit.labels_.astype(np.int64)
    means = np.stack([data[labels == j].mean(axis=0) for j in range(k)])
    return torch.from_numpy(means).to(torch.float64), torch.from_numpy(labels)
