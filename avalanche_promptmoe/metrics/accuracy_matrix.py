"""Task-averaged continual-learning metrics from an accuracy matrix (METHODS.md §0.3).

Dimensions: T trained experiences (rows), T' >= T evaluated tasks (columns).

``A[t, i]`` is the accuracy (a fraction in [0, 1]) on task ``i``'s test set after training task
``t``. Only the lower triangle ``i <= t`` of the first ``T`` rows enters the metrics; every other
entry (future tasks evaluated mid-run, columns beyond ``T``) may hold an accuracy or NaN and is
ignored. All metrics are *task-averaged* (every task weighs the same, as in the HiDe-Prompt and
SMoPE code), not sample-weighted like Avalanche's stream accuracy.

Forgetting comes in the two conventions of the papers' code, which differ when a task improves at
the last stage: ``ffm`` (SMoPE, signed; :func:`final_forgetting`) and ``ffm_hide`` (HiDe-Prompt,
every term >= 0; :func:`final_forgetting_hide`). Compare each paper's rows with its own.

This module depends on numpy only (torch tensors are accepted as input); it never imports
Avalanche.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "cumulative_average_accuracy",
    "final_average_accuracy",
    "final_forgetting",
    "final_forgetting_hide",
    "summarize",
    "validate_accuracy_matrix",
]


def _as_float_array(matrix: Any) -> np.ndarray:
    """Converts a numpy array, nested sequence or torch tensor to a float64 numpy array."""
    if hasattr(matrix, "detach") and hasattr(matrix, "cpu"):  # a torch.Tensor, without importing torch
        matrix = matrix.detach().cpu().numpy()
    try:
        return np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"accuracy matrix must be a 2-D array of floats, got {type(matrix).__name__}: {err}"
        ) from err


def validate_accuracy_matrix(matrix: Any) -> np.ndarray:
    """Checks an accuracy matrix and returns it as a float64 numpy array (a copy).

    Args:
        matrix: ``A`` of shape ``(T, T')`` with ``T >= 1`` trained rows and ``T' >= T`` task
            columns; numpy array, nested list or torch tensor.

    Returns:
        ``A`` as a new ``np.ndarray`` of dtype float64, shape ``(T, T')``.

    Raises:
        TypeError: ``matrix`` cannot be read as an array of floats.
        ValueError: ``A`` is not 2-D, has no rows, has fewer columns than rows, holds a value
            outside ``[0, 1]`` (NaN is allowed outside the lower triangle), or a required entry
            ``A[t, i]`` with ``i <= t`` is NaN (the message names the first one).
    """
    acc = _as_float_array(matrix)
    if acc.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D (T_trained, T_tasks), got shape {acc.shape}")
    num_trained, num_tasks = acc.shape
    if num_trained < 1:
        raise ValueError(f"accuracy matrix needs at least one trained row, got shape {acc.shape}")
    if num_tasks < num_trained:
        raise ValueError(
            f"accuracy matrix of shape {acc.shape} has fewer task columns ({num_tasks}) than trained "
            f"rows ({num_trained}); row t needs columns 0..t"
        )
    finite_or_nan = np.isfinite(acc) | np.isnan(acc)
    out_of_range = ~finite_or_nan | (~np.isnan(acc) & ((acc < 0.0) | (acc > 1.0)))
    if out_of_range.any():
        t, i = (int(v) for v in np.argwhere(out_of_range)[0])
        raise ValueError(
            f"accuracy matrix entry A[{t}, {i}] = {float(acc[t, i])!r} is outside [0, 1]; accuracies are "
            "fractions (divide percentages by 100)"
        )
    # Required entries: the lower triangle i <= t of the first T columns.
    required_missing = np.tril(np.isnan(acc[:, :num_trained]))
    if required_missing.any():
        t, i = (int(v) for v in np.argwhere(required_missing)[0])
        raise ValueError(
            f"accuracy matrix entry A[{t}, {i}] is NaN but required: the accuracy on task {i} after "
            f"training task {t} (every A[t, i] with i <= t must be evaluated)"
        )
    return acc


def final_average_accuracy(matrix: Any) -> float:
    """Final average accuracy, FAA = (1/T) · Σ_{i=0}^{T-1} A[T-1, i].

    The mean over the tasks seen so far of the accuracy after the last trained task (METHODS.md
    §0.3). Columns ``i >= T`` (future tasks) are ignored.

    Args:
        matrix: accuracy matrix ``(T, T')``, see :func:`validate_accuracy_matrix`.

    Returns:
        FAA as a float in ``[0, 1]``.
    """
    acc = validate_accuracy_matrix(matrix)
    last = acc.shape[0] - 1
    return float(acc[last, : last + 1].mean())


def cumulative_average_accuracy(matrix: Any) -> float:
    """Cumulative average accuracy, CAA = (1/T) · Σ_{t=0}^{T-1} (1/(t+1)) · Σ_{i=0}^{t} A[t, i].

    The mean over training stages of the task-averaged accuracy at that stage (SMoPE ``run.py``;
    METHODS.md §0.3).

    Args:
        matrix: accuracy matrix ``(T, T')``, see :func:`validate_accuracy_matrix`.

    Returns:
        CAA as a float in ``[0, 1]``.
    """
    acc = validate_accuracy_matrix(matrix)
    stage_means = [acc[t, : t + 1].mean() for t in range(acc.shape[0])]
    return float(np.mean(stage_means))


def final_forgetting(matrix: Any) -> float:
    """Final forgetting, FFM = (1/(T-1)) · Σ_{i=0}^{T-2} (max_{i<=t<=T-2} A[t, i] − A[T-1, i]).

    For each earlier task, the best accuracy it reached before the last stage minus its accuracy
    after the last stage, averaged over the ``T - 1`` earlier tasks (METHODS.md §0.3). A term is
    negative when a task improved at the last stage (backward transfer); terms are not clipped.
    This is SMoPE's convention (``Minhchuyentoancbn/SMoPE`` ``trainer.py``,
    ``Trainer.summarize_fr``: ``max(acc_matrix[:, :task_id], axis=1) - acc_matrix[:, task_id]``
    over the earlier tasks, i.e. the max over the *earlier* stages only). For HiDe-Prompt's, see
    :func:`final_forgetting_hide`.

    With a single trained row (``T = 1``) no task can have been forgotten and the function returns
    ``0.0`` (not NaN), so that the value can be logged at every stage.

    Args:
        matrix: accuracy matrix ``(T, T')``, see :func:`validate_accuracy_matrix`.

    Returns:
        FFM as a float in ``[-1, 1]``; ``0.0`` when ``T = 1``.
    """
    acc = validate_accuracy_matrix(matrix)
    last = acc.shape[0] - 1
    if last == 0:
        return 0.0
    drops = [acc[i:last, i].max() - acc[last, i] for i in range(last)]
    return float(np.mean(drops))


def final_forgetting_hide(matrix: Any) -> float:
    """Final forgetting as HiDe-Prompt reports it: (1/(T-1)) · Σ_{i=0}^{T-2} (max_{i<=t<=T-1} A[t, i] − A[T-1, i]).

    The same as :func:`final_forgetting` except that the max runs over *every* stage, the last one
    included, so each term is ``>= 0`` (a task that improved at the last stage counts 0, not a
    negative drop). Source: ``thu-ml/HiDe-Prompt`` ``engine.py`` (and
    ``engines/hide_wtp_and_tap_engine.py``), ``evaluate_till_now``:
    ``np.mean((np.max(acc_matrix, axis=1) - acc_matrix[:, task_id])[:task_id])`` on a matrix indexed
    ``[task, stage]`` whose unevaluated entries are 0 (so they never win the max).

    Args:
        matrix: accuracy matrix ``(T, T')``, see :func:`validate_accuracy_matrix`.

    Returns:
        FFM (HiDe) as a float in ``[0, 1]``; ``0.0`` when ``T = 1``. Always ``>= final_forgetting``.
    """
    acc = validate_accuracy_matrix(matrix)
    last = acc.shape[0] - 1
    if last == 0:
        return 0.0
    drops = [acc[i : last + 1, i].max() - acc[last, i] for i in range(last)]
    return float(np.mean(drops))


def summarize(matrix: Any) -> dict[str, float]:
    """Computes FAA, CAA and FFM (both conventions) of one accuracy matrix.

    Args:
        matrix: accuracy matrix ``(T, T')``, see :func:`validate_accuracy_matrix`.

    Returns:
        ``{"faa": ..., "caa": ..., "ffm": ..., "ffm_hide": ...}`` as Python floats (fractions, not
        percentages); ``ffm`` is SMoPE's signed convention, ``ffm_hide`` HiDe-Prompt's.
    """
    acc = validate_accuracy_matrix(matrix)
    return {
        "faa": final_average_accuracy(acc),
        "caa": cumulative_average_accuracy(acc),
        "ffm": final_forgetting(acc),
        "ffm_hide": final_forgetting_hide(acc),
    }
