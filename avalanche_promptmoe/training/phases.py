"""HiDe-style phase logic as plain functions on feature tensors (METHODS.md §3).

* :func:`kmeans` and :class:`ClassGaussians` — per-class multi-centroid diagonal Gaussians of
  pre-logit features (HiDe: 10 KMeans centroids per class; SMoPE: 1).
* :func:`train_head_on_features` — train a head on fixed features (TII's first stage, cached).
* :func:`train_head_on_images` — train a head on the features of a fresh augmented view of the
  images each epoch (TII's first stage as HiDe's ``train_one_epoch`` runs it).
* :func:`train_head_on_gaussians` — re-align a head on features sampled from the class Gaussians
  (TII replay and TAP), with HiDe's / SMoPE's sampling (``sampling="official"``: per centroid,
  one iteration per previous-task class) or a plain per-class draw (``"per_class"``).
* :func:`contrastive_regulariser` — HiDe's WTP regulariser (``orth_loss``, τ = 0.8).

No Avalanche here: every function takes tensors and modules and an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.heads import mask_logits
from .schedules import cosine_iter_factor, lagged_factor

__all__ = [
    "ClassGaussians",
    "contrastive_regulariser",
    "kmeans",
    "train_head_on_features",
    "train_head_on_gaussians",
    "train_head_on_images",
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

    def fit(
        self, features: Tensor, labels: Tensor, *, n_centroids: int = 10, generator: torch.Generator | None = None,
        method: Literal["lloyd", "sklearn"] = "lloyd",
    ) -> None:
        """Add (or replace) the statistics of every class present in ``labels``; ``method``: our
        :func:`kmeans` or the official scikit-learn ``KMeans`` (training/sklearn_kmeans.py)."""
        features, labels = features.detach().float().cpu(), labels.cpu()
        if method not in ("lloyd", "sklearn"):
            raise ValueError(f"method: expected 'lloyd' or 'sklearn', got {method!r}")
        for c in labels.unique().tolist():
            f = features[labels == c]
            if method == "sklearn":
                from .sklearn_kmeans import sklearn_kmeans

                centroids, assign = sklearn_kmeans(f, n_centroids, generator=generator)
                centroids = centroids.float()
            else:
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

    def sample_per_centroid(
        self, classes: Iterable[int], per_centroid: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``per_centroid`` features from every centroid of every class in ``classes``, skipping the
        centroids of zero variance (HiDe / SMoPE ``train_task_adaptive_prediction``:
        ``if var.mean() == 0: continue``), in class-then-centroid order: ``(n, D)``, ``(n,)``."""
        xs, ys = [], []
        for c in classes:
            for mean, var in zip(self.means[c], self.variances[c]):
                if bool((var <= VAR_EPS).all()):  # raw variance 0 (a single sample, or identical ones)
                    continue
                noise = torch.randn(per_centroid, mean.shape[0], generator=generator)
                xs.append(mean + noise * var.sqrt())
                ys.append(torch.full((per_centroid,), c, dtype=torch.long))
        if not xs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
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
    schedule: Literal["constant", "cosine", "cosine_iter"],
    device: torch.device | str,
    iters_per_epoch: int | None = None,
    lr_min: float = 0.0,
    clip_grad: float | None = None,
    first_lr: float | None = None,
    desc: str = "head",
    progress: bool = False,
) -> float:
    """The shared loop: per epoch, one pass over ``batches(epoch)``; CE masked to ``allowed``.

    ``schedule``: ``"constant"``; ``"cosine"`` per epoch to ``lr_min`` (``CosineAnnealingLR``,
    T_max = epochs, as HiDe); ``"cosine_iter"`` per iteration over ``epochs × iters_per_epoch`` to
    ``lr_min`` (SMoPE's ``CosineSchedulerIter``); with ``first_lr`` it runs with SMoPE's lag: the
    first iteration at ``first_lr``, iteration ``k`` at the cosine's step ``k − 1``
    (``schedules.lagged_factor``). A progress bar over the epochs shows the last loss.
    The head's gradients are cleared (``None``) on return.
    """
    from tqdm.auto import tqdm

    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs), eta_min=lr_min)
    elif schedule == "cosine_iter":
        if not iters_per_epoch:
            raise ValueError("schedule 'cosine_iter' needs iters_per_epoch")
        total = max(1, epochs * iters_per_epoch)
        factors = [
            cosine_iter_factor(g["lr"], total_iters=total, lr_min=lr_min, freeze_iters=0)
            for g in optimizer.param_groups
        ]
        if first_lr is not None:
            factors = [lagged_factor(f, first_lr / g["lr"]) for f, g in zip(factors, optimizer.param_groups)]
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    elif schedule != "constant":
        raise ValueError(f"schedule: expected 'constant', 'cosine' or 'cosine_iter', got {schedule!r}")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    head.train()
    last: Tensor | float = float("nan")
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        for x, y in batches(epoch):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(mask_logits(head(x), allowed), y)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            optimizer.step()
            if schedule == "cosine_iter":
                sched.step()
            last = loss.detach()
        if schedule == "cosine":
            sched.step()
        if progress:
            bar.set_postfix(loss=f"{float(last):.4f}")
    bar.close()
    optimizer.zero_grad(set_to_none=True)  # no stale gradients for the next phase's plugins (AGEM...)
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
    clip_grad: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "TII head",
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

    return _fit(head, batches, epochs=epochs, optimizer=opt, allowed=allowed, schedule="constant", device=device,
                clip_grad=clip_grad, desc=desc, progress=progress)


def train_head_on_images(
    head: nn.Module,
    feature_fn: Callable[[Tensor], Tensor],
    loader: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    *,
    classes: Iterable[int],
    num_classes: int,
    epochs: int,
    lr: float,
    clip_grad: float | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "TII head",
) -> float:
    """Adam on ``feature_fn`` of each batch of ``loader(epoch)`` (HiDe's TII ``train_one_epoch``).

    ``loader(epoch)`` yields ``(x, y)`` image batches; give it the training transform, so that each
    epoch sees a fresh augmented view. ``feature_fn`` runs without gradients (frozen backbone); only
    ``head`` trains, with CE masked to ``classes`` and the gradient norm clipped to ``clip_grad``.
    Constant lr (the official TII scripts' schedules do not decay within 20 epochs).
    """
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    allowed = _allowed(num_classes, classes)

    def batches(epoch: int):
        for batch in loader(epoch):
            x, y = batch[0].to(device, non_blocking=True), torch.as_tensor(batch[1]).long()
            with torch.no_grad():
                f = feature_fn(x).float()
            yield f, y

    return _fit(head, batches, epochs=epochs, optimizer=opt, allowed=allowed, schedule="constant", device=device,
                clip_grad=clip_grad, desc=desc, progress=progress)


def replay_iterations(n_previous_classes: int, n_samples: int, batch_size: int) -> int:
    """Iterations per epoch of the official replay: one per previous-task class, never past the
    drawn samples (``crct_num`` batches of ``batch_size`` slices in HiDe / SMoPE)."""
    return max(0, min(n_previous_classes, math.ceil(n_samples / max(1, batch_size))))


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
    sampling: Literal["per_class", "official"] = "per_class",
    previous_classes: int | None = None,
    schedule: Literal["cosine", "cosine_iter"] = "cosine",
    lr_min: float = 0.0,
    first_lr: float | None = None,
    ranks: int = 1,
    progress: bool = False,
    desc: str = "replay",
) -> float:
    """Re-align ``head`` on features sampled from the class Gaussians (HiDe's TAP / TII replay).

    ``sampling="per_class"``: each epoch draws ``samples_per_class`` features per class in
    ``classes`` and passes over all of them in batches of ``batch_size``.
    ``sampling="official"`` (HiDe / SMoPE ``train_task_adaptive_prediction``): each epoch draws
    ``batch_size`` features from every centroid (of non-zero variance) of every class in
    ``classes``, shuffles them and runs ``previous_classes`` iterations (the number of classes of
    the earlier tasks), each on the next ``batch_size`` slice. ``ranks`` > 1 reproduces a
    data-parallel run on one device: every epoch each of the ``ranks`` virtual ranks makes its own
    draw and shuffle, and iteration i trains on slice i of every rank's draw (``ranks × batch_size``
    samples, one mean loss = DDP's gradient mean).
    Optimiser: SGD (momentum 0.9) or AdamW at ``lr`` with ``weight_decay``; ``schedule`` ``"cosine"``
    per epoch (HiDe) or ``"cosine_iter"`` per iteration (SMoPE), both down to ``lr_min``;
    ``first_lr`` (``"cosine_iter"`` only): SMoPE's official lag, the first iteration at ``first_lr``
    (its ``ca_lr``), then the cosine from ``lr`` one iteration late. Logits outside ``classes``
    masked. Returns the last loss.
    """
    classes = list(classes)
    params = [p for p in head.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer: expected 'sgd' or 'adamw', got {optimizer!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    allowed = _allowed(num_classes, classes)
    if sampling == "official":
        if previous_classes is None:
            raise ValueError("sampling='official' needs previous_classes (the classes of the earlier tasks)")
        n_draw = sum(
            batch_size * int(sum(not bool((v <= VAR_EPS).all()) for v in stats.variances[c])) for c in classes
        )
        iters = replay_iterations(previous_classes, n_draw, batch_size)
        if ranks < 1:
            raise ValueError(f"ranks: must be >= 1, got {ranks}")

        def batches(_epoch: int):
            draws = []
            for _ in range(ranks):
                x, y = stats.sample_per_centroid(classes, batch_size, generator)
                order = torch.randperm(len(y), generator=generator)
                draws.append((x[order], y[order]))
            for i in range(iters):
                part = slice(i * batch_size, (i + 1) * batch_size)
                yield torch.cat([x[part] for x, _ in draws]), torch.cat([y[part] for _, y in draws])
    elif sampling == "per_class":
        iters = math.ceil(len(classes) * samples_per_class / batch_size)

        def batches(_epoch: int):
            x, y = stats.sample(classes, samples_per_class, generator)
            order = torch.randperm(len(y), generator=generator)
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                yield x[idx], y[idx]
    else:
        raise ValueError(f"sampling: expected 'per_class' or 'official', got {sampling!r}")

    return _fit(head, batches, epochs=epochs, optimizer=opt, allowed=allowed, schedule=schedule, device=device,
                iters_per_epoch=iters, lr_min=lr_min, first_lr=first_lr, desc=desc, progress=progress)


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

