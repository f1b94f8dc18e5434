"""Run logging: an Avalanche ``BaseLogger`` that writes to MLflow, and the report plots.

Everything is exported lazily (a module ``__getattr__``): importing this subpackage imports
neither MLflow nor matplotlib; ``from avalanche_promptmoe.logging import MLflowLogger`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avalanche_promptmoe._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
