"""Avalanche plugin metric that keeps the accuracy matrix and emits FAA / CAA / FFM.

Dimensions: T trained experiences (rows), T' evaluated experiences (columns).

One accuracy matrix is kept per evaluated stream name (``"test"``, ``"train"``, ...). Row ``t``
holds the accuracies measured after training experience ``t``; column ``i`` is the experience
index ``experience.current_experience`` of the evaluated experience. Task labels play no part, so
benchmarks with and without task labels give the same keys.

Which row an evaluation fills:

* an ``eval()`` outside training (or Avalanche's periodic eval at the start of ``train()``) fills
  row ``clock.train_exp_counter - 1``, the last fully trained experience; before any training this
  is ``-1`` and the evaluation is ignored;
* a periodic eval while experience ``t`` is being trained (``eval_every > 0``: after an epoch or
  iteration, and the final one that Avalanche runs inside ``after_training_exp`` before its clock
  counts the experience) fills row ``t``. Avalanche always evaluates the end of an experience (the
  last epoch's eval, or the final one), so the row ends with the experience's final model; the
  provisional values of earlier epochs are overwritten.

Several evaluations after the same training step overwrite that row, entry by entry: an experience
evaluated again replaces its accuracy, one not evaluated again keeps its old value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from avalanche_promptmoe.metrics.accuracy_matrix import summarize

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

__all__ = ["TaskAveragedMetrics", "task_averaged_metrics"]

_STATE_VERSION = 1
#: summary key -> metric name prefix
_METRIC_NAMES = {"faa": "FAA", "caa": "CAA", "ffm": "FFM", "ffm_hide": "FFM_HiDe"}


class TaskAveragedMetrics(PluginMetric[dict[str, float]]):
    """Per-stream accuracy matrix with task-averaged FAA, CAA and FFM (METHODS.md §0.3).

    At ``after_eval`` it emits, for each stream evaluated in that call and with ``x_plot =
    clock.train_iterations``:

    * ``FAA/eval_phase/<stream>_stream``, ``CAA/eval_phase/<stream>_stream``,
      ``FFM/eval_phase/<stream>_stream`` and ``FFM_HiDe/eval_phase/<stream>_stream`` (floats in
      [0, 1]; FFM, SMoPE's signed convention, in [-1, 1]; FFM_HiDe is HiDe-Prompt's, >= 0), each only
      when the entries it needs (``A[t, i]`` with ``i <= t``; FAA: the last row only) have been
      evaluated;
    * ``TaskAccMatrix/eval_phase/<stream>_stream``: the matrix as a float32 ``torch.Tensor`` of
      shape ``(T, T')``, ``T`` = experiences trained so far, NaN where not evaluated. Columns of
      future experiences are kept in the matrix but never enter FAA/CAA/FFM.

    Accuracy per experience is correct / total over its evaluation minibatches, with the
    prediction ``mb_output.argmax(1)`` (or ``mb_output`` itself if it is 1-D) against ``mb_y``,
    i.e. the same numbers as Avalanche's ``Top1_Acc_Exp``.

    Use :meth:`state_dict` / :meth:`load_state_dict` to checkpoint the matrices (exact resume).
    If ``train()`` raises, the experience index it was training stays set (``after_training`` never
    ran) until the next ``train()``; restore the checkpoint's state before evaluating again.
    """

    def __init__(self) -> None:
        super().__init__()
        self._matrices: dict[str, np.ndarray] = {}
        # Bookkeeping of the current eval call: stream -> experience index -> [correct, total].
        self._counts: dict[str, dict[int, list[Any]]] = {}
        self._current_stream: str | None = None
        self._current_exp: int | None = None
        # Index of the experience being trained (from before_training_exp to after_training).
        self._training_exp: int | None = None

    # ------------------------------------------------------------------ public read access
    @property
    def streams(self) -> list[str]:
        """Names of the streams with a recorded matrix, sorted."""
        return sorted(self._matrices)

    def get_accuracy_matrix(self, stream: str | None = None) -> np.ndarray:
        """Returns a copy of one stream's accuracy matrix.

        Args:
            stream: stream name (``"test"``, not ``"test_stream"``). ``None``: ``"test"`` if
                recorded, else the only recorded stream.

        Returns:
            float64 array ``(T, T')``, NaN where not evaluated; ``(0, 0)`` when nothing has been
            recorded yet.

        Raises:
            KeyError: the named stream has no matrix.
            ValueError: ``stream`` is None, there is no ``"test"`` matrix and several streams.
        """
        if stream is None:
            if not self._matrices:
                return np.zeros((0, 0), dtype=np.float64)
            if "test" in self._matrices:
                stream = "test"
            elif len(self._matrices) == 1:
                stream = next(iter(self._matrices))
            else:
                raise ValueError(
                    f"no 'test' stream recorded and several streams {self.streams}; pass stream="
                )
        if stream not in self._matrices:
            raise KeyError(f"no accuracy matrix recorded for stream {stream!r}; have {self.streams}")
        return self._matrices[stream].copy()

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """The default stream's accuracy matrix (see :meth:`get_accuracy_matrix`)."""
        return self.get_accuracy_matrix()

    def result(self) -> dict[str, float] | None:
        """FAA / CAA / FFM of the default stream's matrix (keys faa, caa, ffm, ffm_hide), where computable.

        Returns ``None`` when nothing has been recorded.
        """
        if not self._matrices:
            return None
        return _computable_summary(self.accuracy_matrix)

    def reset(self) -> None:
        """Forgets every matrix and the bookkeeping of any eval in progress."""
        self._matrices = {}
        self._counts = {}
        self._current_stream = None
        self._current_exp = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Matrices (float64 tensors per stream) and training position, all weights_only-safe."""
        return {
            "version": _STATE_VERSION,
            "matrices": {name: torch.from_numpy(m.copy()) for name, m in self._matrices.items()},
            "training_exp": self._training_exp,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned.

        Raises:
            ValueError: unknown state version or a matrix that is not 2-D.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"TaskAveragedMetrics state version {state.get('version')!r} is not supported "
                f"(expected {_STATE_VERSION})"
            )
        matrices: dict[str, np.ndarray] = {}
        for name, mat in state["matrices"].items():
            arr = torch.as_tensor(mat).detach().cpu().to(torch.float64).numpy().copy()
            if arr.ndim != 2:
                raise ValueError(f"matrix of stream {name!r} must be 2-D, got shape {arr.shape}")
            matrices[str(name)] = arr
        self.reset()
        self._matrices = matrices
        training_exp = state["training_exp"]
        self._training_exp = None if training_exp is None else int(training_exp)

    # ------------------------------------------------------------------ training callbacks
    def before_training_exp(self, strategy: SupervisedTemplate) -> None:
        # The Clock plugin counts an experience in after_training_exp, after the evaluator's
        # callbacks and after Avalanche's final periodic eval, so this index holds until then.
        self._training_exp = int(strategy.clock.train_exp_counter)

    def after_training(self, strategy: SupervisedTemplate) -> None:
        self._training_exp = None

    # ------------------------------------------------------------------ eval callbacks
    def before_eval(self, strategy: SupervisedTemplate) -> None:
        self._counts = {}

    def before_eval_exp(self, strategy: SupervisedTemplate) -> None:
        experience = strategy.experience
        self._current_stream = str(experience.origin_stream.name)
        self._current_exp = int(experience.current_experience)
        stream_counts = self._counts.setdefault(self._current_stream, {})
        stream_counts.setdefault(self._current_exp, [0, 0])

    def after_eval_iteration(self, strategy: SupervisedTemplate) -> None:
        super().after_eval_iteration(strategy)
        if self._current_stream is None or self._current_exp is None:
            return
        predicted = torch.as_tensor(strategy.mb_output)
        target = torch.as_tensor(strategy.mb_y)
        # Same reductions as Avalanche's Accuracy (torch.max, so ties break identically).
        if predicted.ndim > 1:  # logits (B, C) -> labels (B,)
            predicted = torch.max(predicted, 1)[1]
        if target.ndim > 1:  # one-hot (B, C) -> labels (B,)
            target = torch.max(target, 1)[1]
        if predicted.shape[0] != target.shape[0]:
            raise ValueError(
                f"mb_output has {predicted.shape[0]} predictions but mb_y has {target.shape[0]} labels"
            )
        entry = self._counts[self._current_stream][self._current_exp]
        # Accumulated on the device; read back once per experience (no sync per minibatch).
        entry[0] = entry[0] + (predicted == target.to(predicted.device)).sum()
        entry[1] += int(target.shape[0])

    def after_eval_exp(self, strategy: SupervisedTemplate) -> None:
        self._current_stream = None
        self._current_exp = None

    def after_eval(self, strategy: SupervisedTemplate) -> list[MetricValue]:
        counts, self._counts = self._counts, {}
        row = self._row_to_fill(strategy)
        if row is None:
            return []
        x_plot = int(strategy.clock.train_iterations)
        values: list[MetricValue] = []
        for stream, per_exp in counts.items():
            accuracies = {
                exp: float(correct) / total for exp, (correct, total) in per_exp.items() if total > 0
            }
            if not accuracies:
                continue
            self._store(stream, row, accuracies)
            values.extend(self._metric_values(stream, row, x_plot))
        return values

    # ------------------------------------------------------------------ helpers
    def _row_to_fill(self, strategy: SupervisedTemplate) -> int | None:
        """Index of the trained experience this evaluation describes, or None to ignore it."""
        if self._training_exp is not None:
            return self._training_exp  # periodic eval inside train()
        row = int(strategy.clock.train_exp_counter) - 1
        return row if row >= 0 else None

    def _store(self, stream: str, row: int, accuracies: dict[int, float]) -> None:
        old = self._matrices.get(stream, np.zeros((0, 0), dtype=np.float64))
        rows = max(old.shape[0], row + 1)
        cols = max(old.shape[1], max(accuracies) + 1)
        mat = np.full((rows, cols), np.nan, dtype=np.float64)
        mat[: old.shape[0], : old.shape[1]] = old
        for exp, acc in accuracies.items():
            mat[row, exp] = acc
        self._matrices[stream] = mat

    def _metric_values(self, stream: str, row: int, x_plot: int) -> list[MetricValue]:
        suffix = f"eval_phase/{stream}_stream"
        # Rows of trained experiences only; pad columns so the lower triangle always exists.
        mat = self._matrices[stream][: row + 1]
        if mat.shape[1] < row + 1:
            mat = np.pad(mat, ((0, 0), (0, row + 1 - mat.shape[1])), constant_values=np.nan)
        values = [
            MetricValue(self, f"{_METRIC_NAMES[name]}/{suffix}", value, x_plot)
            for name, value in _computable_summary(mat).items()
        ]
        tensor = torch.from_numpy(mat.astype(np.float32))
        values.append(MetricValue(self, f"TaskAccMatrix/{suffix}", tensor, x_plot))
        return values

    def __str__(self) -> str:
        return "TaskAveragedMetrics"


def _computable_summary(mat: np.ndarray) -> dict[str, float]:
    """FAA (needs the last row's i <= t entries) and CAA / both FFMs (need the whole lower triangle).

    Metrics whose entries have not all been evaluated (e.g. an eval on part of the stream, or a
    training step after which no eval ran) are left out rather than guessed.
    """
    num_trained = mat.shape[0]
    if num_trained == 0 or mat.shape[1] < num_trained:
        return {}
    square = mat[:, :num_trained]
    if not np.isnan(np.tril(square)).any():
        return summarize(mat)
    if not np.isnan(square[-1]).any():
        # Earlier rows are incomplete: FAA alone, = final_average_accuracy's formula on the last row.
        return {"faa": float(square[-1].mean())}
    return {}


def task_averaged_metrics() -> TaskAveragedMetrics:
    """Factory for :class:`TaskAveragedMetrics`, for ``EvaluationPlugin(*metrics)``."""
    return TaskAveragedMetrics()
