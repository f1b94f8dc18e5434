"""``GradientScalingPlugin``: Hash's history-aware gradient modulation (HGM)."""

from __future__ import annotations

from typing import Any

from avalanche.core import SupervisedPlugin

from ...routing import scale_frequent_grads

__all__ = ["GradientScalingPlugin"]


class GradientScalingPlugin(SupervisedPlugin, supports_distributed=True):
    """After backward, multiplies the gradients of the frequently used experts by ``alpha``.

    Works with any strategy whose model exposes ``expert_grad_targets() -> [(param, frequent)]``,
    ``param`` shaped ``(layers, E, ...)`` and ``frequent`` bool ``(layers, E)``.

    Args:
        alpha: the scale α in (0, 1] (Hash: 0.1); 1 is the identity.
    """

    def __init__(self, *, alpha: float = 0.1) -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.alpha == 1.0:
            return
        for param, frequent in strategy.model.expert_grad_targets():
            if param.grad is not None and frequent.any():
                param.grad.copy_(scale_frequent_grads(param.grad, frequent, self.alpha))

    def state_dict(self) -> dict:
        return {"alpha": self.alpha}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = float(state["alpha"])

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Check the model's interface (:class:`~..protocols.ExpertGradModel`) before any step."""
        from ..protocols import ExpertGradModel, require

        require(self, strategy.model, [ExpertGradModel])
