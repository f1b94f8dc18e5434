"""Validation of task ids passed to a model's forward (issue #13 item 5). Torch only."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_task_ids"]


def check_task_ids(task_ids: Tensor | int, num_tasks: int, owner: str) -> None:
    """Refuse task ids outside ``[0, num_tasks)`` (negative ids would silently index from the end).

    Args:
        task_ids: an ``int`` or an integer tensor ``(B,)``; float tensors (task weights) pass.
        num_tasks: tasks the model holds (trained or being trained).
        owner: the model's name, for the message.

    Raises:
        ValueError: naming the bad ids and the valid range.
    """
    if isinstance(task_ids, bool):
        raise ValueError(f"{owner}: task_ids must be an int or an integer tensor, got {task_ids!r}")
    if isinstance(task_ids, int):
        if not 0 <= task_ids < num_tasks:
            raise ValueError(
                f"{owner}: task id {task_ids} is outside the {num_tasks} task(s) it holds "
                f"(valid: 0..{num_tasks - 1})"
            )
        return
    if isinstance(task_ids, Tensor) and not torch.is_floating_point(task_ids):
        bad = (task_ids < 0) | (task_ids >= num_tasks)
        if bool(bad.any()):
            shown = sorted({int(t) for t in task_ids[bad].flatten()[:100].tolist()})[:10]
            raise ValueError(
                f"{owner}: task ids {shown} are outside the {num_tasks} task(s) it holds "
                f"(valid: 0..{num_tasks - 1}); evaluate experiences that were not trained yet without task ids"
            )
