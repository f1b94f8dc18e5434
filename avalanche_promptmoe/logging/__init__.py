"""Run logging: an Avalanche ``BaseLogger`` that writes to MLflow, and the report plots.

Everything is exported lazily (a module ``__getattr__``): importing this subpackage imports
neither MLflow nor matplotlib; ``from avalanche_promptmoe.logging import MLflowLogger`` does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avalanche_promptmoe.logging.mlflow_logger import MLflowFallbackWarning, MLflowLogger
    from avalanche_promptmoe.logging.plots import plot_accuracy_matrix, plot_expert_usage

_LAZY = {
    "MLflowLogger": "avalanche_promptmoe.logging.mlflow_logger",
    "MLflowFallbackWarning": "avalanche_promptmoe.logging.mlflow_logger",
    "plot_accuracy_matrix": "avalanche_promptmoe.logging.plots",
    "plot_expert_usage": "avalanche_promptmoe.logging.plots",
}

__all__ = ["MLflowFallbackWarning", "MLflowLogger", "plot_accuracy_matrix", "plot_expert_usage"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
