"""Routers: Hash's task-gated router and SMoPE's prompt-attention score aggregation."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["RouterInit", "TaskGatedRouter", "prompt_attention_scores"]

#: How a new task's router weights are drawn: ``"kaiming"`` — U(±1/√d) like ``nn.Linear`` (scores
#: within about ±0.1 of each other on a fresh router); ``"uniform_pm1"`` — U(−1, 1) like HiDe's prompts
#: (√(d) times wider: the score spread is of order 1, so a penalty δ = 0.4 is soft).
RouterInit = Literal["kaiming", "uniform_pm1"]


class TaskGatedRouter(nn.Module):
    """Hash's task-aware gated router for one prompted layer: one ``W_r^(t)`` per task.

    ``scores = mean_n(x W_r^(t)) / sqrt(d)`` for input tokens ``x`` of shape ``(B, N, d)``; the mean
    over tokens commutes with the linear map, so it is computed on ``mean_n(x)``. Weights are
    initialised like ``nn.Linear`` (Kaiming-uniform, bound ``1/sqrt(d)``; ``init="kaiming"``) or
    U(−1, 1) (``init="uniform_pm1"``); a new task's router is created by :meth:`add_task` (optionally
    copied from the previous task's).
    """

    def __init__(self, embed_dim: int, num_experts: int, *, init: RouterInit = "kaiming") -> None:
        super().__init__()
        if init not in ("kaiming", "uniform_pm1"):
            raise ValueError(f"init: expected 'kaiming' or 'uniform_pm1', got {init!r}")
        self.embed_dim, self.num_experts, self.init = embed_dim, num_experts, init
        self.weights = nn.ParameterList()

    @property
    def num_tasks(self) -> int:
        return len(self.weights)

    def add_task(self, *, copy_previous: bool = False, generator: torch.Generator | None = None) -> int:
        """Create the router of a new task; returns its task index. Earlier routers are frozen."""
        w = torch.empty(self.embed_dim, self.num_experts)
        if copy_previous and self.num_tasks:
            w.copy_(self.weights[-1].detach())
        else:
            bound = 1.0 / math.sqrt(self.embed_dim) if self.init == "kaiming" else 1.0
            w.uniform_(-bound, bound, generator=generator)
        for old in self.weights:
            old.requires_grad_(False)
        ref = self.weights[0] if self.num_tasks else None
        self.weights.append(nn.Parameter(w.to(ref.device) if ref is not None else w))
        return self.num_tasks - 1

    def forward(self, x: Tensor, task_ids: Tensor | int) -> Tensor:
        """Router scores ``(B, E)``.

        Args:
            x: tokens entering the prompted attention, ``(B, N, d)``.
            task_ids: one task for the batch (int) or a per-sample task id ``(B,)``.
        """
        if not self.num_tasks:
            raise RuntimeError("TaskGatedRouter: no task router yet; call add_task() first")
        xbar = x.mean(dim=1)  # (B, d)
        scale = 1.0 / math.sqrt(self.embed_dim)
        if isinstance(task_ids, int):
            if not 0 <= task_ids < self.num_tasks:
                raise ValueError(f"task_ids: {task_ids} out of range for {self.num_tasks} task routers")
            return (xbar @ self.weights[task_ids].to(xbar.dtype)) * scale
        w_all = torch.stack(list(self.weights)).to(xbar.dtype)  # (T, d, E)
        scores = torch.einsum("bd,tde->bte", xbar, w_all) * scale  # (B, T, E)
        idx = task_ids.to(scores.device).long().clamp(0, self.num_tasks - 1)
        return scores.gather(1, idx.view(-1, 1, 1).expand(-1, 1, self.num_experts)).squeeze(1)


def prompt_attention_scores(q: Tensor, prefix_keys: Tensor) -> Tensor:
    """SMoPE's proxy score per expert and head: the token-mean query against each expert's key.

    ``s̄[b, h, e] = mean_n(q[b, h, n]) · prefix_keys[e, h]`` — unscaled, as the released code (the
    attention logit applies ``1/sqrt(Dh)`` separately).

    Args:
        q: queries ``(B, H, N, Dh)``.
        prefix_keys: one key per expert and head, ``(E, H, Dh)``.
    Returns:
        ``(B, H, E)``.
    """
    qbar = q.mean(dim=2)  # (B, H, Dh)
    return torch.einsum("bhd,ehd->bhe", qbar, prefix_keys.to(qbar.dtype))
