"""Task labels as an oracle task id at evaluation (``use_task_labels=True``; issue #13 item 5).

The strategy numbers tasks in training order; a stream's task labels are mapped to those numbers
when each experience is trained (:meth:`TaskLabelMap.record`). At evaluation
(:meth:`TaskLabelMap.lookup`):

* a sample whose task label belongs to a trained experience gets that task's id (the oracle);
* a sample whose label is not (yet) known — an experience not trained yet, as in the README loop
  that evaluates the whole test stream after each experience — is evaluated **as without task
  labels** (the method's own task inference), never with a wrong or out-of-range id;
* a stream without task labels (batches of ``(x, y)`` only, or every experience labelled 0 as in
  Avalanche's class-incremental benchmarks) makes the flag ineffective: one warning, then
  evaluation without task labels.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["TaskLabelMap"]

_NO_LABELS = (
    "use_task_labels=True, but {why}: the stream has no task labels, so evaluation runs without them "
    "(the method infers the task, as with use_task_labels=False)"
)


class TaskLabelMap:
    """Stream task label -> the strategy's task index; tracks whether the labels can be used."""

    def __init__(self) -> None:
        self.label_to_task: dict[int, int] = {}
        self.usable = True
        self.reason: str | None = None

    def _disable(self, why: str) -> None:
        if self.usable:
            warnings.warn(_NO_LABELS.format(why=why), UserWarning, stacklevel=3)
        self.usable = False
        self.reason = self.reason or why

    def record(self, task: int, batch_labels: Tensor | None, experience: Any = None) -> None:
        """Map the task label(s) of the experience trained as ``task``.

        Args:
            task: the strategy's task index of the experience.
            batch_labels: the task labels of one of its training batches (``None``: the batches
                carry no task labels).
            experience: the Avalanche experience (its ``origin_stream`` is inspected once: every
                experience with the same single label means the stream has no task labels).
        """
        if not self.usable or task in self.label_to_task.values():
            return
        if batch_labels is None:
            self._disable("its batches carry no task labels (x, y only)")
            return
        if not self.label_to_task and experience is not None:
            labels = _stream_labels(experience)
            if labels is not None and len(labels) > 1 and len(set(labels)) == 1:
                self._disable(f"all {len(labels)} experiences of the stream have task label {labels[0]}")
                return
        found = sorted({int(t) for t in torch.unique(batch_labels).tolist()})
        new = [label for label in found if label not in self.label_to_task]
        if len(found) == 1 and not new:
            label = found[0]
            self._disable(f"experiences {self.label_to_task[label]} and {task} share task label {label}")
        elif len(new) > 1:
            self._disable(f"experience {task} mixes the new task labels {new}")
        elif new:  # one new label (a joint step's batch also holds the earlier experiences' labels)
            self.label_to_task[new[0]] = task

    def lookup(self, labels: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """``(task ids (B,), known (B,) bool)`` for a batch's task labels, or ``(None, None)`` when
        labels cannot be used; ids of unknown labels are 0 and must be ignored (``known`` False)."""
        if labels is None:
            self._disable("its batches carry no task labels (x, y only)")
            return None, None
        if not self.usable or not self.label_to_task:
            return None, None
        size = max(max(self.label_to_task), int(labels.max())) + 1 if labels.numel() else 1
        table = torch.full((max(size, 1),), -1, dtype=torch.long)
        for label, task in self.label_to_task.items():
            table[label] = task
        table = table.to(labels.device)
        safe = labels.long().clamp(min=0)
        ids = table[safe]
        known = (labels >= 0) & (ids >= 0)
        return ids.clamp(min=0), known

    def state_dict(self) -> dict[str, Any]:
        return {"label_to_task": {int(k): int(v) for k, v in self.label_to_task.items()},
                "usable": self.usable, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.label_to_task = {int(k): int(v) for k, v in state.get("label_to_task", {}).items()}
        self.usable = bool(state.get("usable", True))
        self.reason = state.get("reason")


def _stream_labels(experience: Any) -> list[int] | None:
    """The single task label of every experience in the experience's stream (None: unknown)."""
    try:
        stream = experience.origin_stream
        labels = []
        for exp in stream:
            tl = list(exp.task_labels)
            if len(tl) != 1:
                return None
            labels.append(int(tl[0]))
        return labels
    except (AttributeError, TypeError, IndexError):
        return None
