"""Continual-learning metrics: accuracy matrix → FAA / CAA / FFM, and the Avalanche plugin metric.

``accuracy_matrix`` (numpy only) is imported eagerly; the plugin, which needs Avalanche, is
imported on first attribute access so that ``import avalanche_promptmoe.metrics`` works without
Avalanche installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from avalanche_promptmoe.metrics.accuracy_matrix import (
    cumulative_average_accuracy,
    final_average_accuracy,
    final_forgetting,
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
    "summarize",
    "task_averaged_metrics",
    "validate_accuracy_matrix",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
