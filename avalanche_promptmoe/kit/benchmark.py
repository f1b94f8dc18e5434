"""Split Tiny-ImageNet-32: the kit's 100 downstream classes as an Avalanche class-incremental benchmark,
and the reference ViT's input transform."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from avalanche_promptmoe.kit.arrays import load_kit_arrays
from avalanche_promptmoe.kit.files import load_kit_meta

__all__ = ["ToModelInput", "reference_transform", "split_tinyimagenet32"]


class ToModelInput:
    """Image -> normalized float32 CHW tensor: ``(x / 255 - mean) / std`` (picklable, deterministic).

    Accepts a uint8 CHW tensor (the benchmark's storage), a float CHW tensor in [0, 1], a uint8 HWC
    ``numpy`` array, or a PIL image.

    Args:
        mean: per-channel mean, in [0, 1] units.
        std: per-channel std, in [0, 1] units.
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)  # uint8 input
        self._scale01 = 1.0 / std_t  # [0, 1] float input
        self._shift = -torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, img: Any) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            arr = np.asarray(img)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if img.dtype == torch.uint8:
            return img.float().mul_(self._scale).add_(self._shift)
        return img.float().mul(self._scale01).add_(self._shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def reference_transform(kit_dir: str | os.PathLike | None = None) -> ToModelInput:
    """The reference ViT's input transform: RGB in [0, 1] normalized with the JSON's mean/std.

    Args:
        kit_dir: the kit folder; ``None`` = :func:`default_kit_dir`.
    """
    norm = load_kit_meta(kit_dir).get("normalization", {})
    return ToModelInput(norm.get("mean", (0.5, 0.5, 0.5)), norm.get("std", (0.5, 0.5, 0.5)))


# ----------------------------------------------------------------------------------------- benchmark


def _take_first_per_class(y: np.ndarray, k: int | None, name: str, n_classes: int) -> np.ndarray:
    """Indices of the first ``k`` samples of each class (in array order)."""
    counts = np.bincount(y, minlength=n_classes)
    if k is None:
        return np.arange(len(y))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive int or None, got {k!r}")
    if k > counts.min():
        raise ValueError(f"{name}={k} exceeds the images available per class (min {int(counts.min())})")
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.concatenate([order[s : s + k] for s in starts])
    return np.sort(keep)


def split_tinyimagenet32(
    root: str | os.PathLike | None = None,
    n_experiences: int = 10,
    seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    normalize: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """Class-incremental Split Tiny-ImageNet-32 on the kit's 100 downstream classes.

    Built with Avalanche's ``class_incremental_benchmark`` (streams ``train`` and ``test``, samples
    ``(x, y)``, no task labels, labels not remapped). The class order is
    ``numpy.random.RandomState(seed).permutation(100)``, passed as ``class_order``: building the
    benchmark leaves the global torch RNG untouched. Images are stored as uint8 and converted on
    access to float32 CHW tensors, normalized with the JSON's mean/std (model-ready), or in [0, 1]
    with ``normalize=False``. The same deterministic transform serves the train and eval groups.

    Args:
        root: the kit (see :func:`load_kit_arrays`); ``None`` = :func:`default_kit_dir`.
        n_experiences: number of experiences; must divide the number of classes (100).
        seed: seed of the class order.
        train_per_class: keep the first k train images of each class (file-name order); ``None`` = all.
        test_per_class: the same for the test images; ``None`` = all.
        normalize: normalize with the reference ViT's mean/std (else [0, 1]).
        cache_dir: the array cache (see :func:`load_kit_arrays`).

    Returns:
        An Avalanche ``CLScenario`` with ``train_stream`` / ``test_stream``; it also carries
        ``class_order`` (list of int), ``protocol`` (the arguments, the kit's sha256 and wnids).

    Raises:
        ValueError: ``n_experiences`` does not divide 100, or a per-class count exceeds the images.
        KitError: the kit is missing or corrupt.
    """
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset
    from avalanche.benchmarks.utils.transform_groups import TransformGroups
    from torch.utils.data import TensorDataset

    if (
        isinstance(n_experiences, bool)
        or not isinstance(n_experiences, (int, np.integer))
        or n_experiences < 1
    ):
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
    data = load_kit_arrays(root, cache_dir=cache_dir)
    n_classes = len(data["wnids"])
    if n_classes % n_experiences:
        raise ValueError(
            f"n_experiences={n_experiences} must divide the {n_classes} classes "
            "(class_incremental_benchmark would silently drop the remainder)"
        )
    tr_idx = _take_first_per_class(data["y_train"], train_per_class, "train_per_class", n_classes)
    te_idx = _take_first_per_class(data["y_test"], test_per_class, "test_per_class", n_classes)

    transform = reference_transform(data["kit_dir"]) if normalize else ToModelInput()
    groups = TransformGroups({"train": transform, "eval": transform})

    def as_dataset(x: np.ndarray, y: np.ndarray) -> Any:
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # uint8 NCHW
        ds = TensorDataset(xt, torch.from_numpy(y))
        ds.targets = y.tolist()
        return as_classification_dataset(ds, transform_groups=groups)

    class_order = np.random.RandomState(seed).permutation(n_classes).tolist()
    bm = class_incremental_benchmark(
        {
            "train": as_dataset(data["x_train"][tr_idx], data["y_train"][tr_idx]),
            "test": as_dataset(data["x_test"][te_idx], data["y_test"][te_idx]),
        },
        class_order=class_order,
        num_experiences=int(n_experiences),
    )
    bm.class_order = class_order
    bm.protocol = {
        "benchmark": "split_tinyimagenet32",
        "n_experiences": int(n_experiences),
        "seed": int(seed),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "normalize": bool(normalize),
        "n_train": len(tr_idx),
        "n_test": len(te_idx),
        "tar_sha256": data["tar_sha256"],
        "wnids": data["wnids"],
        "transform": repr(transform),
    }
    return bm

