"""``RoutingHistoryPlugin``: cumulative expert-selection counts per layer (and head)."""

from __future__ import annotations

from typing import Any

from avalanche.core import SupervisedPlugin

from ...routing import ExpertUsage
from ..distributed import all_reduce_sum_

__all__ = ["RoutingHistoryPlugin"]


class RoutingHistoryPlugin(SupervisedPlugin, supports_distributed=True):
    """Counts the experts the router picks during training and commits them at the end of each task.

    Works with any strategy whose model records ``last_routing: {layer: RoutingOutput}`` on each
    forward and exposes ``layers`` (the prompted blocks). Counts of task t are committed in
    ``after_training_exp`` (a snapshot per task), so a penalty read from them is constant within a
    task (DECISIONS.md §B3). With ``record_training=False`` the plugin only keeps state: the strategy
    records selections itself (SMoPE's post-task pass).

    Args:
        usage: the :class:`ExpertUsage` counter (shape ``(layers, heads, experts)``).
        record_training: record the selections of every training forward.
    """

    def __init__(self, *, usage: ExpertUsage, record_training: bool = True) -> None:
        super().__init__()
        self.usage = usage
        self.record_training = record_training

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        if not self.record_training:
            return
        routing = getattr(strategy.model, "last_routing", None) or {}
        for pos, layer in enumerate(strategy.model.layers):
            if layer in routing:
                self.usage.record(pos, routing[layer].indices)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.record_training:  # each rank saw a shard of the training data: sum the counts
            all_reduce_sum_(self.usage.pending)
        self.usage.commit(snapshot=True)

    def state_dict(self) -> dict:
        return {"usage": self.usage.state_dict(), "record_training": self.record_training}

    def load_state_dict(self, state: dict) -> None:
        self.usage.load_state_dict(state["usage"])
        self.record_training = bool(state["record_training"])

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Check the model's interface (:class:`~..protocols.RoutingRecordModel`) before any step."""
        from ..protocols import RoutingRecordModel, require

        if self.record_training:
            require(self, strategy.model, [RoutingRecordModel])
