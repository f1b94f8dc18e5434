"""What :class:`MLflowLogger` reads from a strategy by itself: the resolved settings, the benchmark
protocol, the expert usage and the final task-averaged metrics. Duck-typed, so that it works with
our strategies (everything) and with any Avalanche strategy (what Avalanche exposes)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "benchmark_protocol", "describe_strategy", "expert_usage", "final_metrics", "method_label", "task_averaged_metric",
]

_SCALARS = (str, int, float, bool, type(None))


def method_label(strategy: Any) -> str:
    """Our method name (``hash``, ``smope``...), else the strategy's class name."""
    return str(getattr(strategy, "method_name", None) or type(strategy).__name__)


def describe_strategy(strategy: Any) -> dict[str, Any]:
    """Resolved settings of a strategy as a nested mapping (flattened to MLflow params by the logger).

    Our strategies: ``method.name`` and every method config field (defaults included),
    ``strategy.*`` (class, batch sizes, epochs, seed, task labels), ``backbone.*`` (name, weights,
    kwargs, fingerprint). Any Avalanche strategy: ``strategy.*`` (class, batch sizes, epochs,
    optimizer class and learning rate, plugins) and ``model.class``.
    """
    out: dict[str, Any] = {}
    strat: dict[str, Any] = {"class": type(strategy).__name__}
    for key in ("train_mb_size", "eval_mb_size", "train_epochs", "use_task_labels"):
        value = getattr(strategy, key, None)
        if isinstance(value, _SCALARS) and value is not None:
            strat[key] = value
    cfg = getattr(strategy, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):  # one of ours
        out["method"] = {"name": method_label(strategy), **cfg.to_dict()}
        strat["seed"] = getattr(strategy, "seed", None)
        spec = dict(getattr(strategy, "backbone_spec", {}) or {})
        if spec:
            out["backbone"] = {
                "name": spec.get("backbone"),
                "pretrained": spec.get("pretrained"),
                "checkpoint_path": spec.get("checkpoint_path"),
                "kwargs": dict(spec.get("backbone_kwargs") or {}),
                "fingerprint": getattr(strategy, "backbone_fingerprint", None),
            }
    else:
        optimizer = getattr(strategy, "optimizer", None)
        if optimizer is not None:
            strat["optimizer"] = type(optimizer).__name__
            groups = getattr(optimizer, "param_groups", None) or []
            if groups and "lr" in groups[0]:
                strat["lr"] = float(groups[0]["lr"])
        model = getattr(strategy, "model", None)
        if model is not None:
            out["model"] = {"class": type(model).__name__}
    plugins = [type(p).__name__ for p in getattr(strategy, "plugins", []) or []]
    strat["plugins"] = [p for p in plugins if p not in ("EvaluationPlugin", "Clock", "PeriodicEval")]
    out["strategy"] = strat
    return out


def benchmark_protocol(strategy: Any, benchmark: Any = None) -> dict[str, Any] | None:
    """The ``protocol`` record our benchmark builders attach (``bm.protocol``), from ``benchmark``
    or from the current experience's stream (``experience.origin_stream.benchmark``); else None."""
    candidates = [benchmark]
    experience = getattr(strategy, "experience", None)
    stream = getattr(experience, "origin_stream", None) if experience is not None else None
    candidates.append(getattr(stream, "benchmark", None))
    for bm in candidates:
        protocol = getattr(bm, "protocol", None)
        if isinstance(protocol, dict):
            return protocol
    return None


def expert_usage(strategy: Any) -> Any:
    """Expert-selection counts ``(layers, heads, experts)`` through ``strategy.expert_usage()``;
    None for strategies without expert routing."""
    accessor = getattr(strategy, "expert_usage", None)
    return accessor() if callable(accessor) else None


def task_averaged_metric(strategy: Any) -> Any:
    """The strategy's :class:`~avalanche_promptmoe.metrics.TaskAveragedMetrics` (accuracy matrix), or None."""
    evaluator = getattr(strategy, "evaluator", None)
    for metric in getattr(evaluator, "metrics", []) or []:
        if type(metric).__name__ == "TaskAveragedMetrics":
            return metric
    return None


def final_metrics(strategy: Any) -> tuple[dict[str, float], int] | None:
    """``({key: value}, tasks)`` of the task-averaged metrics (``summarize`` of the accuracy matrix:
    faa, caa, ffm, ...) plus ``trainable_params`` and ``sample_weighted_stream_acc`` where known, once
    every trained task has been evaluated after every training step (the lower triangle of the
    matrix is complete); None otherwise, or when the strategy has no ``TaskAveragedMetrics``."""
    from avalanche_promptmoe.metrics import summarize

    metric = task_averaged_metric(strategy)
    if metric is None:
        return None
    try:
        matrix = np.asarray(metric.accuracy_matrix, dtype=np.float64)
    except ValueError:  # several streams, none named test
        return None
    tasks = matrix.shape[0]
    if tasks == 0 or matrix.shape[1] < tasks or np.isnan(matrix[np.tril_indices(tasks)]).any():
        return None
    values = {k: float(v) for k, v in summarize(matrix).items()}
    count = getattr(strategy, "trainable_parameter_count", None)
    if callable(count):
        values["trainable_params"] = float(count())
    last = strategy.evaluator.get_last_metrics()
    key = next((k for k in sorted(last) if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")), None)
    if key is not None and isinstance(last[key], (int, float)) and math.isfinite(float(last[key])):
        values["sample_weighted_stream_acc"] = float(last[key])
    return values, tasks
