"""Hash's prompted model: a shared expert pool per prompted layer, one task-gated router per task
and layer, the history-aware routing penalty, a linear head and HiDe's TII head. Imports only torch
and the torch-only layers.

Per prompted layer l and sample b (B batch, E experts, K selected, L tokens, H heads, Dh head dim):

    s      = mean_n(x_attn) W_r^(l,t) / sqrt(d)            (B, E)     task-gated router of task t
    s      ← (s − mean_e s) / std_e s   (score_reading="standardised" only; "raw" keeps s)
    s~     = s - δ · 1[e ∈ frequent_(t,l)]                  (B, E)     history penalty (HDR)
    idx, ω = top-K(s~), softmax over the K selected         (B, K)
    p~     = Σ_k ω_k · pool_l[idx_k]                        (B, H, L, Dh) for keys and for values

The frequent set used by task t is fixed when task t starts (``task_frequent[t]``), so the penalty
is constant within a task and routing at inference repeats what the task was trained with.
``router_init`` draws a new task's router (``"kaiming"``, ``"uniform_pm1"``) or copies the previous
task's (``"copy_previous"``; the first task's is Kaiming-uniform).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ...engine import TaskIdentityHead, check_task_ids
from ...prompts import PromptPool
from ...routing import (
    RoutingOutput,
    ScoreReading,
    TaskGatedRouter,
    check_top_k,
    dense_weights,
    history_penalty,
    read_scores,
    top_k_route,
)
from ..model_base import PromptedClassifier

__all__ = ["HashPromptModel", "HashRouterInit"]

#: A new task's router: drawn Kaiming-uniform or U(−1, 1), or copied from the previous task's.
HashRouterInit = Literal["kaiming", "uniform_pm1", "copy_previous"]


class HashPromptModel(PromptedClassifier):
    """Frozen ViT + shared prompt pool + per-task routers + head (+ TII head).

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in a PrefixViT).
        num_classes: head outputs.
        layers: prompted blocks (default: the first 4, the paper's "1–4").
        num_experts: N_r = 15; length: L = 15 key and 15 value tokens per expert.
        top_k: K = 2; delta: δ = 0.4 (in the units of ``score_reading``).
        score_reading: ``"raw"`` or ``"standardised"`` (per sample over the experts).
        router_init: ``"kaiming"``, ``"uniform_pm1"`` or ``"copy_previous"``.
        prompt_init: pool initialisation (``prompts.init_prompt_``).
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
        score_reading: ScoreReading = "standardised",
        router_init: HashRouterInit = "kaiming",
        prompt_init: str = "uniform_pm1",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, layers)
        check_top_k(top_k, num_experts)
        if delta < 0:
            raise ValueError(f"delta: must be >= 0, got {delta}")
        if score_reading not in ("raw", "standardised"):
            raise ValueError(f"score_reading: expected 'raw' or 'standardised', got {score_reading!r}")
        if router_init not in ("kaiming", "uniform_pm1", "copy_previous"):
            raise ValueError(
                f"router_init: expected 'kaiming', 'uniform_pm1' or 'copy_previous', got {router_init!r}"
            )
        self.top_k, self.delta, self.num_experts = top_k, float(delta), num_experts
        self.score_reading, self.router_init = score_reading, router_init
        self.pool = PromptPool(
            self.layers, num_experts, length, self.vit.num_heads, self.vit.head_dim,
            convention="kv_each", init=prompt_init, generator=generator,
        )
        draw = "uniform_pm1" if router_init == "uniform_pm1" else "kaiming"
        self.routers = nn.ModuleList(
            TaskGatedRouter(self.vit.embed_dim, num_experts, init=draw) for _ in self.layers
        )
        self.tii = TaskIdentityHead(self.vit.num_features, num_classes)
        # frequent set of each task, fixed when the task starts: (T, layers, E)
        self.register_buffer("task_frequent", torch.zeros(0, len(self.layers), num_experts, dtype=torch.bool))
        self.last_routing: dict[int, RoutingOutput] = {}
        #: per layer, the scores of the last forward before the penalty, in ``score_reading`` units
        self.last_scores: dict[int, Tensor] = {}
        self.last_task_ids: Tensor | int = 0
        self._generator = generator

    @property
    def num_tasks(self) -> int:
        return self.routers[0].num_tasks

    @property
    def frequent(self) -> Tensor:
        """The newest task's frequent set ``(layers, E)`` (what the penalty and HGM use in training)."""
        if not self.num_tasks:
            return torch.zeros(len(self.layers), self.num_experts, dtype=torch.bool, device=self.task_frequent.device)
        return self.task_frequent[-1]

    def add_task(self, frequent: Tensor | None = None) -> int:
        """Create every layer's router for a new task (earlier ones freeze) and fix its frequent set."""
        copy = self.router_init == "copy_previous"
        for router in self.routers:
            task = router.add_task(copy_previous=copy, generator=self._generator)
        if frequent is None:
            frequent = torch.zeros(len(self.layers), self.num_experts, dtype=torch.bool)
        frequent = frequent.to(self.task_frequent.device, torch.bool).view(1, len(self.layers), self.num_experts)
        self.task_frequent = torch.cat([self.task_frequent, frequent])
        return task

    def structure(self) -> dict:
        return {"num_tasks": self.num_tasks}

    def grow_to(self, structure: dict) -> None:
        while self.num_tasks < int(structure["num_tasks"]):
            self.add_task()

    def route(self, layer: int, x_attn: Tensor, task_ids: Tensor | int) -> RoutingOutput:
        pos = self.pool.pos(layer)
        scores = read_scores(self.routers[pos](x_attn, task_ids), self.score_reading)  # (B, E)
        self.last_scores[layer] = scores.detach()
        if self.delta:
            freq = self.task_frequent[task_ids, pos]  # (E,) or (B, E)
            scores = history_penalty(scores, freq, self.delta)
        return top_k_route(scores, self.top_k)

    def forward_features(self, x: Tensor, task_ids: Tensor | int) -> Tensor:
        """Prompted pre-logit features ``(B, D)``; records ``last_routing`` per layer."""
        if not self.num_tasks:
            raise RuntimeError("HashPromptModel: no task yet; call add_task() first")
        routing: dict[int, RoutingOutput] = {}

        def provider(layer: int, x_attn: Tensor, q: Tensor):
            out = self.route(layer, x_attn, task_ids)
            routing[layer] = out
            keys, values = self.pool.combine(layer, dense_weights(out, self.num_experts))
            return keys, values, None

        feats = self.vit(x, provider)
        self.last_routing = routing
        self.last_task_ids = task_ids
        self.last_features = feats
        return feats

    def forward(self, x: Tensor, task_ids: Tensor | int | None = None) -> Tensor:
        """Logits ``(B, num_classes)``; ``task_ids`` defaults to the newest task's router."""
        if task_ids is None:
            task_ids = self.num_tasks - 1
        check_task_ids(task_ids, self.num_tasks, type(self).__name__)
        return self.head(self.forward_features(x, task_ids))

    def expert_grad_targets(self) -> list[tuple[nn.Parameter, Tensor]]:
        """(parameter, frequent mask ``(layers, E)``) pairs for history-aware gradient scaling."""
        return [(self.pool.keys, self.frequent), (self.pool.values, self.frequent)]
