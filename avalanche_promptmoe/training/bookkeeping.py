"""Task and class bookkeeping of :class:`~.base_strategy.PromptStrategyBase` (a mixin).

Which classes each trained task holds (``task_classes``, ``class_to_task``, the classes seen so
far), the checks on each experience before it is trained (not empty, class ids in range, classes
disjoint from the trained ones), the refusal of ``eval()`` before any training, evaluation with the
stream's task labels as an oracle task id (``use_task_labels``), and what the strategy reports
about itself (expert usage, trainable parameters).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .experience import experience_classes
from .input_checks import check_eval_classes

__all__ = ["TaskBookkeepingMixin"]


class TaskBookkeepingMixin:
    """Classes per task, experience checks and evaluation helpers of ``PromptStrategyBase`` (its
    attributes are set in ``PromptStrategyBase.__init__``)."""

    @property
    def task_id(self) -> int:
        """Index of the task being trained (or the last trained one)."""
        return max(0, len(self.task_classes) - 1)

    @property
    def seen_classes(self) -> list[int]:
        return sorted(self.class_to_task)

    def eval(self, exp_list: Any, **kwargs: Any) -> dict:
        """Avalanche's ``eval`` after checks: not before any training, class ids in range; warns once
        per call with the count of evaluation images holding non-finite values (issue #22)."""
        if not self.trained_experiences and not self._in_train_call and not self.task_classes:
            raise RuntimeError(
                f"{type(self).__name__}.eval() called before any training: call train(experience) or "
                f"resume_from(checkpoint) first"
            )
        check_eval_classes(exp_list, self.num_classes)
        outer = self._eval_nonfinite is None  # periodic evaluations inside train() count in their own call
        if outer:
            self._eval_nonfinite = [torch.zeros((), dtype=torch.long), 0]  # [non-finite images (device), images]
        try:
            result = super().eval(exp_list, **kwargs)
            bad, total = int(self._eval_nonfinite[0]), self._eval_nonfinite[1]
            if outer and bad:
                warnings.warn(
                    f"eval: {bad} of {total} evaluation images hold non-finite values (NaN/inf); their predictions "
                    f"are meaningless but count in the accuracy — check the data files and transforms",
                    UserWarning, stacklevel=2,
                )
            return result
        finally:
            if outer:
                self._eval_nonfinite = None

    def _predict_with_task_labels(self, x: Tensor, batch_labels: Tensor | None) -> Tensor:
        """``inference_logits`` with the oracle task ids of samples from trained experiences; the
        other samples (experiences not trained yet, or a stream without task labels) are
        evaluated as without task labels (training/task_labels.py)."""
        if not self.use_task_labels:
            return self.inference_logits(x, None).float()
        ids, known = self.task_label_map.lookup(batch_labels)
        if ids is None or not bool(known.any()):
            return self.inference_logits(x, None).float()
        if bool(known.all()):
            return self.inference_logits(x, ids).float()
        logits = self.inference_logits(x, None).float()
        logits[known] = self.inference_logits(x[known], ids[known]).float()
        return logits

    def _task_of_class(self) -> Tensor:
        """``(num_classes,)`` task index of each trained class (−1 elsewhere), on the device."""
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long)
        if self.class_to_task:
            lookup[list(self.class_to_task)] = torch.tensor(list(self.class_to_task.values()))
        return lookup.to(self.device)

    def _class_mask(self, classes: Sequence[int]) -> Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool, device=self.device)
        mask[list(classes)] = True
        return mask

    def _check_experience(self, experience: Any) -> None:
        classes = experience_classes(experience)
        if len(experience.dataset) == 0 or not classes:
            raise ValueError(f"experience {experience.current_experience}: it is empty (no samples)")
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(
                f"experience {experience.current_experience}: class ids {bad[:10]} are outside "
                f"[0, {self.num_classes}) (num_classes={self.num_classes})"
            )
        future = getattr(experience, "future_classes", None) or []
        total = len(set(classes) | set(self.class_to_task) | {int(c) for c in future})
        if total > self.num_classes:
            raise ValueError(
                f"num_classes: the benchmark has at least {total} classes, more than num_classes={self.num_classes}"
            )
        repeated = sorted(set(classes) & set(self.class_to_task))
        if repeated:
            raise ValueError(
                f"experience {experience.current_experience}: classes {repeated[:10]} were already trained "
                f"in an earlier experience; class-incremental streams have disjoint classes"
            )

    def expert_usage(self) -> Tensor | None:
        """Cumulative expert-selection counts ``(layers, heads, experts)`` (int64, CPU; heads = 1 when
        routing is shared across heads), committed up to the last finished experience; ``None`` for
        methods without sparse expert routing. Methods with routing override this; MLflowLogger
        plots it after each experience."""
        return None

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
