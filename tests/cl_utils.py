"""Tiny, learnable continual-learning data and backbones for strategy tests (CPU, seconds)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def make_images(n_classes: int, per_class: int, seed: int, img: int = 32, noise: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a fixed random 4×4 colour pattern upsampled to ``img`` px, plus noise."""
    g = torch.Generator().manual_seed(1234)  # class patterns shared by train and test
    patterns = torch.randn(n_classes, 3, 4, 4, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    base = torch.nn.functional.interpolate(patterns[y], size=(img, img), mode="nearest")
    x = base + noise * torch.randn(len(y), 3, img, img, generator=g)
    return x, y


def _dataset(x, y):
    ds = TensorDataset(x, y)
    ds.targets = y.tolist()
    return ds


def make_benchmark(n_exp: int = 3, classes_per_exp: int = 2, per_class: int = 16, test_per_class: int = 8,
                   task_labels: bool = False, img: int = 32, noise: float = 0.8):
    """A class-incremental benchmark: ``class_incremental_benchmark`` (no task labels) or
    ``nc_benchmark`` (task labels), fixed class order 0..C-1."""
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    n = n_exp * classes_per_exp
    tr = _dataset(*make_images(n, per_class, seed=1, img=img, noise=noise))
    te = _dataset(*make_images(n, test_per_class, seed=2, img=img, noise=noise))
    order = list(range(n))
    if task_labels:
        return nc_benchmark(tr, te, n_exp, task_labels=True, fixed_class_order=order,
                            class_ids_from_zero_in_each_exp=False)
    return class_incremental_benchmark(
        {"train": as_classification_dataset(tr), "test": as_classification_dataset(te)},
        class_order=order, num_experiences=n_exp,
    )


def tiny_backbone(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0,
        img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2,
    )


FAST_HIDE = dict(
    tii_epochs=3, tii_replay_epochs=2, tap_epochs=2, samples_per_class=16, n_centroids=2, tap_centroids=2,
)


def record_optimizers(monkeypatch, *names: str) -> list[torch.optim.Optimizer]:
    """Replace each ``torch.optim.<name>`` by a subclass that records every instance (in order)."""
    made: list[torch.optim.Optimizer] = []
    for name in names:
        base = getattr(torch.optim, name)

        class Recorded(base):  # type: ignore[misc, valid-type]
            def __init__(self, params, **kw):
                super().__init__(params, **kw)
                made.append(self)

        monkeypatch.setattr(torch.optim, name, Recorded)
    return made
