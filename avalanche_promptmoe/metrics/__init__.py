"""Continual-learning metrics: accuracy matrix → FAA / CAA / FFM (SMoPE's and HiDe's conventions), and the Avalanche plugin metric.

``accuracy_matrix`` (numpy only) is imported eagerly; the plugin, which needs Avalanche, is
imported on first attribute access so that ``import avalanche_promptmoe.metrics`` works without
Avalanche installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avalanche_promptmoe._lazy import lazy_exports
from avalanche_promptmoe.metrics.accuracy_matrix import (
    cumulative_average_accuracy,
    final_average_accuracy,
    final_forgetting,
    final_forgetting_hide,
    summarize,
    validate_accuracy_matrix,
)

if TYPE_CHECKING:
    from avalanche_promptmoe.metrics.plugin import TaskAveragedMetrics, task_averaged_metrics

_LAZY = {
    "TaskAveragedMetrics": "avalanche_promptmoe.metrics.plugin",
    "task_averaged_metrics": "avalanche_promptmoe.metrics.plugin",
}

__all__ = [
    "TaskAveragedMetrics",
    "cumulative_average_accuracy",
    "final_average_accuracy",
    "final_forgetting",
    "final_forgetting_hide",
    "summarize",
    "task_averaged_metrics",
    "validate_accuracy_matrix",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
