"""Avalanche plugins and metrics our strategies cannot honour, refused when a strategy is built.

Each entry names the plugin or metric and why, so the error says what to use instead:

* ``GDumbPlugin`` on a model that grows per task (Hash, HiDe, HLGP): GDumb resets
  ``strategy.model`` to a copy taken at the first experience, which holds fewer tasks than the
  strategy has trained (and drops the task-identity statistics kept beside it).
* ``MAC_metrics`` (``MinibatchMAC`` / ``EpochMAC`` / ``ExperienceMAC``): Avalanche counts the
  multiply-accumulates of ``nn.Linear`` / ``nn.Conv`` modules in one ``model(x)`` call, which misses
  the prompts, the routers and the second (query) backbone pass of our methods, and fails on a model
  that holds no task yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_supported_plugins"]

_MAC_METRICS = frozenset({"MinibatchMAC", "EpochMAC", "ExperienceMAC"})


def check_supported_plugins(strategy_name: str, plugins: Iterable[Any], evaluator: Any, grows_per_task: bool) -> None:
    """Raise ``ValueError`` for a plugin or metric listed in this module's docstring.

    Args:
        strategy_name: the strategy class's name (for the message).
        plugins: the strategy's plugins; evaluator: its ``EvaluationPlugin`` (its ``metrics`` are read).
        grows_per_task: the model adds parameters per task (``model.structure()`` is not empty).
    """
    from avalanche.training.plugins import GDumbPlugin

    if grows_per_task and any(isinstance(p, GDumbPlugin) for p in plugins):
        raise ValueError(
            f"plugins: GDumbPlugin cannot run on {strategy_name}: it resets the model to its first-experience "
            f"copy, which holds fewer tasks than the strategy trains; use it with SequentialPromptStrategy, "
            f"LinearProbeStrategy or SMoPEStrategy, or ReplayPlugin for rehearsal here"
        )
    macs = sorted({type(m).__name__ for m in getattr(evaluator, "metrics", [])} & _MAC_METRICS)
    if macs:
        raise ValueError(
            f"evaluator: MAC_metrics ({', '.join(macs)}) cannot measure {strategy_name}: it counts nn.Linear/Conv "
            f"work in one model(x) call, missing the prompts, routers and the query backbone pass (and fails "
            f"before the first task); use strategy.trainable_parameter_count() and perf/throughput.py"
        )
