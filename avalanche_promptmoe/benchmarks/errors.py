"""Errors and argument checks shared by the dataset benchmark builders (CIFAR-100, CUB-200, ImageNet-R).

The offline kit keeps its own :class:`~avalanche_promptmoe.kit.KitError`; both
are ``FileNotFoundError`` subclasses, neither derives from the other.
"""

from __future__ import annotations

import numbers

__all__ = ["DatasetNotFoundError", "check_n_experiences"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing, incomplete or corrupt on disk.

    The message says what to download, from where, and the folder layout the builder expects.
    """


def check_n_experiences(n_experiences: object, n_classes: int) -> int:
    """Validate ``n_experiences`` against the number of classes found.

    Avalanche's ``class_incremental_benchmark`` silently drops the remainder classes when the number of
    experiences does not divide the class count, so a non-divisor is rejected here.

    Args:
        n_experiences: the requested number of experiences.
        n_classes: the number of classes in the dataset.

    Returns:
        ``n_experiences`` as a plain ``int``.

    Raises:
        ValueError: not a positive int, or does not divide ``n_classes``.
    """
    if (
        isinstance(n_experiences, bool)
        or not isinstance(n_experiences, numbers.Integral)
        or n_experiences < 1
    ):
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
    if n_classes % int(n_experiences):
        raise ValueError(
            f"n_experiences={n_experiences} must divide the {n_classes} classes found "
            "(class_incremental_benchmark would silently drop the remainder)"
        )
    return int(n_experiences)
