"""Hash's prompted model: a shared expert pool per prompted layer, one task-gated router per task
and layer, the history-aware routing penalty, and a linear head. Imports only torch and timm.

Per prompted layer l and sample b (B batch, E experts, K selected, L tokens, H heads, Dh head dim):

    s      = mean_n(x_attn) W_r^(l,t) / sqrt(d)            (B, E)     task-gated router
    s~     = s - δ · 1[e ∈ frequent_l]                      (B, E)     history penalty (HDR)
    idx, ω = top-K(s~), softmax over the K selected         (B, K)
    p~     = Σ_k ω_k · pool_l[idx_k]                        (B, H, L, Dh) for keys and for values
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...engine import PrefixViT
from ...prompts import PromptPool
from ...routing import (
    RoutingOutput,
    TaskGatedRouter,
    check_top_k,
    dense_weights,
    history_penalty,
    top_k_route,
)

__all__ = ["HashPromptModel"]


class HashPromptModel(nn.Module):
    """Frozen ViT + shared prompt pool + per-task routers + head.

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in :class:`PrefixViT`).
        num_classes: head outputs.
        layers: prompted blocks (default: the first 4, the paper's "1–4").
        num_experts: N_r = 15; length: L = 15 key and 15 value tokens per expert.
        top_k: K = 2; delta: δ = 0.4.
        generator: RNG for the pool/router initialisation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0, 1, 2, 3),
        num_experts: int = 15,
        length: int = 15,
        top_k: int = 2,
        delta: float = 0.4,
        prompt_init: str = "uniform_pm1",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_top_k(top_k, num_experts)
        if delta < 0:
            raise ValueError(f"delta: must be >= 0, got {delta}")
        self.vit = backbone if isinstance(backbone, PrefixViT) else PrefixViT(backbone, layers)
        self.layers = self.vit.layers
        self.top_k, self.delta, self.num_experts = top_k, float(delta), num_experts
        self.pool = PromptPool(
            self.layers, num_experts, length, self.vit.num_heads, self.vit.head_dim,
            convention="kv_each", init=prompt_init, generator=generator,
        )
        self.routers = nn.ModuleList(TaskGatedRouter(self.vit.embed_dim, num_experts) for _ in self.layers)
        self.head = nn.Linear(self.vit.num_features, num_classes)
        self.register_buffer("frequent", torch.zeros(len(self.layers), num_experts, dtype=torch.bool))
        self.last_routing: dict[int, RoutingOutput] = {}
        self._generator = generator

    @property
    def num_tasks(self) -> int:
        return self.routers[0].num_tasks

    def add_task(self) -> int:
        """Create every layer's router for a new task (earlier routers are frozen)."""
        for router in self.routers:
            task = router.add_task(generator=self._generator)
        return task

    def route(self, layer: int, x_attn: Tensor, task_ids: Tensor | int) -> RoutingOutput:
        pos = self.pool.pos(layer)
        scores = self.routers[pos](x_attn, task_ids)  # (B, E)
        if self.delta:
            scores = history_penalty(scores, self.frequent[pos], self.delta)
        return top_k_route(scores, self.top_k)

    def forward_features(self, x: Tensor, task_ids: Tensor | int) -> Tensor:
        """Prompted pre-logit features ``(B, D)``; records ``last_routing`` per layer."""
        routing: dict[int, RoutingOutput] = {}

        def provider(layer: int, x_attn: Tensor, q: Tensor):
            out = self.route(layer, x_attn, task_ids)
            routing[layer] = out
            keys, values = self.pool.combine(layer, dense_weights(out, self.num_experts))
            return keys, values, None

        feats = self.vit(x, provider)
        self.last_routing = routing
        return feats

    def forward(self, x: Tensor, task_ids: Tensor | int | None = None) -> Tensor:
        """Logits ``(B, num_classes)``; ``task_ids`` defaults to the newest task's router."""
        if task_ids is None:
            task_ids = self.num_tasks - 1
        return self.head(self.forward_features(x, task_ids))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
