"""What the strategies read from an Avalanche experience, for every kind of experience Avalanche 0.6 makes.

Experiences from ``class_incremental_benchmark`` / ``nc_benchmark`` carry ``classes_in_this_experience``;
those from ``benchmark_from_datasets`` (and other generic builders) do not, so the classes are then
taken from the experience dataset's ``targets``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["experience_classes"]


def experience_classes(experience: Any) -> list[int]:
    """The sorted class ids of ``experience``.

    ``experience.classes_in_this_experience`` when the experience has it; otherwise the distinct
    values of ``experience.dataset.targets`` (an Avalanche ``DataAttribute``, a list, an array or a
    tensor). An empty experience gives ``[]``.

    Raises:
        TypeError: the experience has neither ``classes_in_this_experience`` nor a dataset with
            ``targets`` (classes cannot be known without reading every sample).
    """
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is not None:
        return sorted({int(c) for c in classes})
    dataset = getattr(experience, "dataset", None)
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(
            f"experience {getattr(experience, 'current_experience', '?')} ({type(experience).__name__}) has "
            f"neither classes_in_this_experience nor dataset.targets: wrap its dataset with Avalanche's "
            f"as_classification_dataset (which needs a .targets list) so the classes can be read"
        )
    uniques = getattr(targets, "uniques", None)  # Avalanche DataAttribute: precomputed set of values
    values = uniques if uniques is not None else _flat(targets)
    return sorted({int(c) for c in values})


def _flat(targets: Any) -> list[Any]:
    tolist = getattr(targets, "tolist", None)  # torch tensors and numpy arrays
    return list(tolist()) if callable(tolist) else list(targets)
