"""HiDe-style phase logic as plain functions on feature tensors (METHODS.md §3).

* :func:`kmeans` and :class:`ClassGaussians` — per-class multi-centroid diagonal Gaussians of
  pre-logit features (HiDe: 10 KMeans centroids per class; SMoPE: 1).
* :func:`train_head_on_features` — train a head on fixed features (TII's first stage).
* :func:`train_head_on_gaussians` — re-align a head on features sampled from the class Gaussians
  (TII replay and TAP).
* :func:`contrastive_regulariser` — HiDe's WTP regulariser (``orth_loss``, τ = 0.8).

No Avalanche here: every function takes tensors and modules and an explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.heads import mask_logits

__all__ = [
    "ClassGaussians",
    "contrastive_regulariser",
    "kmeans",
    "train_head_on_features",
    "train_head_on_gaussians",
]

VAR_EPS = 1e-4  # added to every variance, as HiDe (N(μ, diag(σ²) + 1e-4 I))


def kmeans(x: Tensor, k: int, *, iters: int = 20, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding.

    Args:
        x: ``(N, D)`` points; k: clusters (clamped to ``N``, DECISIONS.md §C7).
    Returns:
        centroids ``(k', D)`` and assignments ``(N,)``, ``k' = min(k, N)``.
    """
    n = x.shape[0]
    k = max(1, min(k, n))
    x = x.float()
    first = torch.randint(n, (1,), generator=generator).item()
    centroids = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        nxt = torch.multinomial(probs, 1, generator=generator).item()
        centroids.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = torch.stack(centroids)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        new = torch.where(counts > 0, new / counts.clamp(min=1), c)  # keep empty clusters in place
        if torch.allclose(new, c):
            break
        c = new
    return c, assign


class ClassGaussians:
    """Per-class mixtures of diagonal Gaussians over features.

    For class c: ``means[c]`` ``(k_c, D)``, ``variances[c]`` ``(k_c, D)`` and ``weights[c]`` ``(k_c,)``
    (the share of the class's samples in each centroid).
    """

    def __init__(self) -> None:
        self.means: dict[int, Tensor] = {}
        self.variances: dict[int, Tensor] = {}
        self.weights: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.means)

    @property
    def classes(self) -> list[int]:
        return sorted(self.means)

    def fit(self, features: Tensor, labels: Tensor, *, n_centroids: int = 10, generator: torch.Generator | None = None) -> None:
        """Add (or replace) the statistics of every class present in ``labels``."""
        features, labels = features.detach().float().cpu(), labels.cpu()
        for c in labels.unique().tolist():
            f = features[labels == c]
            centroids, assign = kmeans(f, n_centroids, generator=generator)
            var = torch.stack([
                f[assign == j].var(0, unbiased=False) if (assign == j).sum() > 1 else torch.zeros(f.shape[1])
                for j in range(centroids.shape[0])
            ])
            self.means[c] = centroids
            self.variances[c] = var + VAR_EPS
            self.weights[c] = torch.bincount(assign, minlength=centroids.shape[0]).float() / len(f)

    def prototypes(self, classes: Iterable[int] | None = None) -> Tensor:
        """All centroids of ``classes`` (default: all) stacked, ``(sum k_c, D)``."""
        classes = self.classes if classes is None else list(classes)
        return torch.cat([self.means[c] for c in classes]) if classes else torch.empty(0)

    def sample(self, classes: Iterable[int], per_class: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``per_class`` features per class, spread over its centroids by weight: ``(n, D)``, ``(n,)``."""
        xs, ys = [], []
        for c in classes:
            comp = torch.multinomial(self.weights[c], per_class, replacement=True, generator=generator)
            noise = torch.randn(per_class, self.means[c].shape[1], generator=generator)
            xs.append(self.means[c][comp] + noise * self.variances[c][comp].sqrt())
            ys.append(torch.full((per_class,), c, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self) -> dict:
        return {
            "means": {int(c): t.clone() for c, t in self.means.items()},
            "variances": {int(c): t.clone() for c, t in self.variances.items()},
            "weights": {int(c): t.clone() for c, t in self.weights.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.means = {int(c): t.clone() for c, t in state["means"].items()}
        self.variances = {int(c): t.clone() for c, t in state["variances"].items()}
        self.weights = {int(c): t.clone() for c, t in state["weights"].items()}


def _allowed(num_classes: int, classes: Iterable[int]) -> Tensor:
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[list(classes)] = True
    return mask


def _fit(
    head: nn.Module,
    batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    allowed: Tensor,
    cosine: bool,
    device: torch.device | str,
) -> float:
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs)) if cosine else None
    head.train()
    last = float("nan")
    for epoch in range(epochs):
        for x, y in batches(epoch):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(mask_logits(head(x), allowed), y)
            loss.backward()
            optimizer.step()
            last = loss.detach()
        if sched is not None:
            sched.step()
    head.eval()
    return float(last)


def train_head_on_features(
    head: nn.Module,
    features: Tensor,
    labels: Tensor,
    *,
    classes: Iterable[int],
    num_classes: int,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Adam on fixed ``(N, D)`` features with CE masked to ``classes``; returns the last loss."""
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    allowed = _allowed(num_classes, classes)

    def batches(_epoch: int):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield features[idx], labels[idx]

    return _fit(head, batches, epochs=epochs, optimizer=opt, allowed=allowed, cosine=False, device=device)


def train_head_on_gaussians(
    head: nn.Module,
    stats: ClassGaussians,
    *,
    classes: Iterable[int],
    num_classes: int,
    epochs: int,
    lr: float,
    samples_per_class: int = 256,
    batch_size: int = 128,
    optimizer: str = "sgd",
    weight_decay: float = 5e-4,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Re-align ``head`` on features sampled from the class Gaussians (HiDe's TAP / TII replay).

    Each epoch draws ``samples_per_class`` features per class in ``classes``; SGD (momentum 0.9) or
    AdamW, weight decay 5e-4, cosine schedule over ``epochs``; logits outside ``classes`` masked.
    """
    classes = list(classes)
    params = [p for p in head.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {optimizer!r}")
    allowed = _allowed(num_classes, classes)

    def batches(_epoch: int):
        x, y = stats.sample(classes, samples_per_class, generator)
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]

    return _fit(head, batches, epochs=epochs, optimizer=opt, allowed=allowed, cosine=True, device=device)


def contrastive_regulariser(features: Tensor, prototypes: Tensor | None, tau: float = 0.8) -> Tensor:
    """HiDe's WTP regulariser: ``CE(M Mᵀ / τ, I)`` with ``M = [old prototypes; batch features]``.

    Each row's positive is itself, so the batch features are pushed away from the stored class
    prototypes of earlier tasks and from each other. Prototypes are constants (no grad).
    """
    if tau <= 0:
        raise ValueError(f"tau: must be positive, got {tau}")
    m = features.float()
    if prototypes is not None and prototypes.numel():
        m = torch.cat([prototypes.to(m.device, m.dtype).detach(), m])
    logits = m @ m.T / tau
    return F.cross_entropy(logits, torch.arange(len(m), device=m.device))

