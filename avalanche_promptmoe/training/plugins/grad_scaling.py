"""``GradientScalingPlugin``: Hash's history-aware gradient modulation (HGM).

The paper presents HGM as "a lower learning rate for the frequently used experts". Two readings:

* ``mode="update"`` (default): after each ``optimizer.step()`` the frequent experts' rows are set to
  ``θ_before + α (θ_after − θ_before)`` — they take α × the step the optimizer made, whatever the
  optimizer; its state (Adam's moments, SGD's momentum) still sees the true gradient, and the other
  rows are left bit for bit as the optimizer wrote them.
* ``mode="grad"``: the frequent experts' gradients are multiplied by α after backward (the literal
  reading, kept for ablations). Adam and AdamW normalise by the running gradient magnitude, so the
  factor cancels there and this is (up to ε) Hash without HGM; only SGD sees it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from ...routing import scale_frequent_grads, scale_frequent_update

__all__ = ["GradientScalingPlugin", "HGMMode"]

HGMMode = Literal["update", "grad"]


class GradientScalingPlugin(SupervisedPlugin, supports_distributed=True):
    """Scales the frequent experts' per-step update (or, with ``mode="grad"``, their gradient) by α.

    Works with any strategy whose model exposes ``expert_grad_targets() -> [(param, frequent)]``,
    ``param`` shaped ``(layers, E, ...)`` and ``frequent`` bool ``(layers, E)``, and with any
    ``torch.optim`` optimizer. Hooks Avalanche's ``before_update`` / ``after_update``, which 0.6 runs
    right around ``optimizer_step()`` (so gradient clipping inside the step is included). Under data
    parallelism the gradients are all-reduced in backward, every rank makes the same step and the
    interpolation is deterministic, so the ranks stay equal; with bf16 autocast the parameters and the
    interpolation stay fp32. A skipped step (e.g. a GradScaler overflow) leaves ``after == before``.

    Args:
        alpha: the scale α in (0, 1] (Hash: 0.1); 1 is the identity.
        mode: ``"update"`` (default) or ``"grad"`` (cancelled by Adam/AdamW; see the module doc).
    """

    def __init__(self, *, alpha: float = 0.1, mode: HGMMode = "update") -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {alpha}")
        if mode not in ("update", "grad"):
            raise ValueError(f"mode: expected 'update' or 'grad', got {mode!r}")
        self.alpha = float(alpha)
        self.mode: HGMMode = mode
        self._before: list[Tensor | None] = []

    def _targets(self, strategy: Any) -> list[tuple[torch.nn.Parameter, Tensor]]:
        return list(strategy.model.expert_grad_targets())

    def after_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.mode != "grad" or self.alpha == 1.0:
            return
        for param, frequent in self._targets(strategy):  # an empty set scales nothing (no host sync)
            if param.grad is not None:
                param.grad.copy_(scale_frequent_grads(param.grad, frequent, self.alpha))

    def before_update(self, strategy: Any, **kwargs: Any) -> None:
        self._before = []
        if self.mode != "update" or self.alpha == 1.0:
            return
        # snapshot every trainable target: with an empty frequent set ``scale_frequent_update`` returns
        # the step bit for bit, and testing ``frequent.any()`` here would cost a host sync per step
        for param, _frequent in self._targets(strategy):
            self._before.append(param.detach().clone() if param.requires_grad else None)

    @torch.no_grad()
    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        if not self._before:
            return
        targets = self._targets(strategy)
        if len(targets) != len(self._before):
            raise RuntimeError(
                f"expert_grad_targets(): {len(targets)} targets after the step, {len(self._before)} before"
            )
        for (param, frequent), before in zip(targets, self._before, strict=True):
            if before is not None:
                param.copy_(scale_frequent_update(before, param.detach(), frequent, self.alpha))
        self._before = []

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        self.alpha = float(state["alpha"])
        # checkpoints written before the "update" mode existed were made with gradient scaling
        self.mode = state.get("mode", "grad")

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Check the model's interface (:class:`~..protocols.ExpertGradModel`) before any step."""
        from ..protocols import ExpertGradModel, require

        require(self, strategy.model, [ExpertGradModel])
