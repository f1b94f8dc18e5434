"""``PrototypeLossPlugin``: SMoPE's prototype loss on previous tasks' prefix keys."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.core import SupervisedPlugin

from ..losses import prototype_loss

__all__ = ["PrototypeLossPlugin"]


class PrototypeLossPlugin(SupervisedPlugin, supports_distributed=True):
    """Adds ``weight · Σ_layers prototype_loss(...)`` to the training loss from the second task on.

    At the end of each task it stores the model's prefix keys and the frequent-expert mask; works
    with any strategy whose model exposes ``prefix_keys() -> (layers, E, H, Dh)``, ``top_k`` and
    ``frequent_mask() -> bool (layers, H, E)``.

    Args:
        weight: α_proto (SMoPE CIFAR-100: 1e-5; CUB-200: 5e-5; ImageNet-R: 1e-4).
        reduction: ``"mean"`` or ``"sum"`` (over heads and targets, the released SMoPE code's scale).
    """

    def __init__(self, *, weight: float = 1e-5, reduction: str = "sum") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight: must be >= 0, got {weight}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
        self.weight = float(weight)
        self.reduction = reduction
        self.old_keys: torch.Tensor | None = None
        self.old_frequent: torch.Tensor | None = None
        self.applied_steps = 0  # training steps that received the loss (reports, CI mechanism checks)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.weight == 0 or self.old_keys is None:
            return
        model = strategy.model
        keys = model.prefix_keys()
        old = self.old_keys.to(keys.device)
        loss = sum(
            prototype_loss(old[i], self.old_frequent[i], keys[i], model.top_k, self.reduction) for i in range(keys.shape[0])
        )
        strategy.loss = strategy.loss + self.weight * loss
        self.applied_steps += 1

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.old_keys = strategy.model.prefix_keys().detach().cpu().clone()
        self.old_frequent = strategy.model.frequent_mask().detach().cpu().clone()

    def state_dict(self) -> dict:
        return {"weight": self.weight, "reduction": self.reduction, "old_keys": self.old_keys,
                "old_frequent": self.old_frequent, "applied_steps": self.applied_steps}

    def load_state_dict(self, state: dict) -> None:
        self.weight = float(state["weight"])
        self.reduction = str(state.get("reduction", "sum"))
        self.old_keys, self.old_frequent = state["old_keys"], state["old_frequent"]
        self.applied_steps = int(state.get("applied_steps", 0))

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Check the model's interface (:class:`~..protocols.PrototypeModel`) before any step."""
        from ..protocols import PrototypeModel, require

        require(self, strategy.model, [PrototypeModel])
