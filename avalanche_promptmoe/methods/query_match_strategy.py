"""``QueryMatchStrategy``: what the L2P, DualPrompt and CODA-Prompt strategies share — the model's
own auxiliary loss (pull or orthogonality term, added unweighted as the official learner does,
``learners/prompt.py:41``) and, for the key-matched pools, selection counts."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..routing import ExpertUsage
from ..training.base_strategy import PromptStrategyBase
from ..training.plugins import RoutingHistoryPlugin

__all__ = ["QueryMatchStrategy"]


class QueryMatchStrategy(PromptStrategyBase):
    """Base of the CODA-Prompt code base's methods: training CE (masked to the experience's classes,
    as the official ``[:, :last_valid_out_dim] = −inf``) + ``model.last_aux_loss``."""

    #: ``(rows, experts)`` of the selection counter, or ``None`` (no discrete selection).
    usage_shape: tuple[int, int] | None = None

    def default_plugins(self) -> list[Any]:
        if self.usage_shape is None:
            return []
        rows, experts = self.usage_shape
        self.routing_history = RoutingHistoryPlugin(usage=ExpertUsage(rows, 1, experts, rule="top_k", k=1))
        return [self.routing_history]

    def expert_usage(self) -> Tensor | None:
        """Cumulative selection counts ``(layers, 1, pool)`` (int64) of the training forwards,
        committed at the end of each experience (row = position in ``model.layers``)."""
        if self.usage_shape is None:
            return None
        return self.routing_history.usage.counts.clone()

    def aux_loss(self) -> Tensor | None:
        return self.model.last_aux_loss

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.model(x)
