"""Checks of what a user hands the strategy, where it enters (issue #22 item 5): the device in the
constructor, the experiences given to ``train`` / ``eval``, the images and labels of a mini-batch.

Every error names the problem and the fix, instead of the first torch op failing inside the step.
Convertible dtypes are converted, with one warning per kind (:class:`InputConversionWarning`):
labels of an integer or integral float dtype become ``int64``; images of a floating dtype other
than ``float32`` become ``float32``. ``uint8`` images are refused (their scaling and normalisation
belong to the transform). Torch only, and Avalanche objects by duck typing.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["InputConversionWarning", "check_eval_classes", "check_train_argument", "convert_minibatch",
           "resolve_device"]


class InputConversionWarning(UserWarning):
    """Labels or images of a convertible dtype were converted (once per kind and strategy)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The strategy's device: CUDA when available for ``None``; an unknown name or a backend this
    machine lacks is a ``ValueError`` that names what is available."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {device!r} is not a device name ({err}); use 'cpu', 'cuda' or 'cuda:N'") from err
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if not available.get(dev.type, True):
        have = ", ".join(repr(k) for k, ok in available.items() if ok)
        raise ValueError(f"device: {dev.type!r} is not available on this machine (torch reports no {dev.type.upper()} "
                         f"support); use one of {have}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {str(dev)!r} does not exist; this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return dev


def check_train_argument(experiences: Any) -> None:
    """``train()`` takes an experience or a list of experiences, not a benchmark or a stream's dataset."""
    if hasattr(experiences, "train_stream") and hasattr(experiences, "streams"):
        raise TypeError(
            "train: got a benchmark; pass one experience at a time — "
            "for exp in benchmark.train_stream: strategy.train(exp)")
    items = experiences if isinstance(experiences, (list, tuple)) else [experiences]
    for item in items:
        if not hasattr(item, "dataset") or not hasattr(item, "current_experience"):
            kind = type(item).__name__
            raise TypeError(
                f"train: expected an Avalanche experience (benchmark.train_stream[i]) or a list of them, got {kind}; "
                f"for a plain dataset build a benchmark first (avalanche.benchmarks.scenarios.supervised."
                f"class_incremental_benchmark or benchmark_from_datasets)")


def check_eval_classes(experiences: Any, num_classes: int) -> None:
    """Every evaluated experience's class ids lie in ``[0, num_classes)`` (as training checks)."""
    from .experience import experience_classes

    try:
        items = [experiences] if hasattr(experiences, "dataset") else list(experiences)
    except TypeError:
        return  # not iterable: Avalanche names it
    for exp in items:
        if not hasattr(exp, "dataset"):
            continue  # Avalanche itself names what is not an experience
        bad = [c for c in experience_classes(exp) if not 0 <= c < num_classes]
        if bad:
            raise ValueError(
                f"eval: experience {getattr(exp, 'current_experience', '?')} holds class ids {bad[:10]} outside "
                f"[0, {num_classes}) (num_classes={num_classes}); build the strategy with num_classes covering "
                f"every class of the benchmark, or evaluate on its own test stream")


def convert_minibatch(x: Tensor, y: Tensor, warned: set[str]) -> tuple[Tensor, Tensor]:
    """Images ``(B, C, H, W)`` as float32 and labels ``(B,)`` as int64, or a clear ``TypeError``.

    ``warned`` holds the kinds already warned about (one warning per kind); it is updated.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"mini-batch: expected image and label tensors, got {type(x).__name__} and "
                        f"{type(y).__name__}; give the dataset a transform that returns tensors (e.g. ToTensor)")
    if x.dtype != torch.float32:
        if not x.is_floating_point():
            raise TypeError(
                f"images: dtype {x.dtype} is not a float image; add a transform that converts and normalises them "
                f"(torchvision: v2.ToDtype(torch.float32, scale=True) then v2.Normalize with the backbone's mean/std)")
        _warn_once(warned, "images", f"images: dtype {x.dtype} converted to torch.float32 (the backbone's dtype)")
        x = x.float()
    if y.dtype != torch.int64:
        if y.is_floating_point() and not bool((y == y.round()).all()):
            raise TypeError(f"labels: dtype {y.dtype} with non-integer values; labels must be class ids "
                            f"(integers in [0, num_classes))")
        if y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"labels: dtype {y.dtype}; labels must be integer class ids")
        _warn_once(warned, "labels", f"labels: dtype {y.dtype} converted to torch.int64 (class ids)")
        y = y.long()
    return x, y


def _warn_once(warned: set[str], kind: str, message: str) -> None:
    if kind not in warned:
        warned.add(kind)
        warnings.warn(message, InputConversionWarning, stacklevel=4)
