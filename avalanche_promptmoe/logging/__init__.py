"""Run logging: an Avalanche ``BaseLogger`` that writes to MLflow, and the report plots.

Everything is exported lazily (a module ``__getattr__``): importing this subpackage imports
neither MLflow nor matplotlib; ``from avalanche_promptmoe.logging import MLflowLogger`` does, and says
to install the ``mlflow`` extra when they are missing.
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


_lazy_getattr, __dir__ = lazy_exports(__name__, _LAZY, globals())
_OPTIONAL = ("mlflow", "matplotlib")  # the ``mlflow`` extra (pyproject.toml)


def __getattr__(name: str) -> object:
    try:
        return _lazy_getattr(name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in _OPTIONAL:
            raise
        raise ImportError(
            f"avalanche_promptmoe.logging.{name} needs {missing}, an optional dependency: "
            f"pip install 'avalanche_promptmoe[mlflow]' (the strategies, metrics and benchmarks work without it)",
            name=exc.name,
        ) from exc
