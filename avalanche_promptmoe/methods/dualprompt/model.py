"""DualPrompt as in the CODA-Prompt code base (``models/zoo.py: DualPrompt``): shared G-prompts in
the first blocks and a task-indexed E-prompt pool with one key set per E-layer, all as prefix
keys/values on the shared engine. Imports only torch and the torch-only layers.

Per E-layer l (B batch, E pool entries = tasks, L prompt length, D width):

    q     = final-LayerNorm [CLS] of the frozen, unprompted ViT                  (B, D), no grad
    cos   = normalize(q) · normalize(K_l)ᵀ                                       (B, E)
    e     = the task id t (training, or an oracle id) | top-1(cos) (inference, per layer, over all E)
    Ek, Ev = P_l[e, :L/2], P_l[e, L/2:]                                          (B, L/2, D)
    pull  = Σ_b (1 − cos[b, t]) (official) or its batch mean (ours), training only

G-layer l: ``Gk, Gv = G_l[:Lg/2], G_l[Lg/2:]`` for every sample; a block that is both puts
``[Ek; Gk]`` before the tokens (zoo.py:630-633).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...prompts import init_prompt_, prefix_lengths
from ...routing import RoutingOutput
from ..model_base import PromptedClassifier
from ..query_match import PullReduction, cosine_scores, prefix_from_official, pull_loss, split_prompt

__all__ = ["DualPromptModel"]


class DualPromptModel(PromptedClassifier):
    """Frozen ViT + G-prompts + a task-keyed E-prompt pool per E-layer (prefix tuning) + linear head.

    Parameters (official layout): ``g_prompts (len(g_layers), Lg, D)``; ``e_prompts (len(e_layers), E,
    L, D)`` and ``e_keys (len(e_layers), E, D)`` (row = task index). Rows ``[0, L/2)`` are keys.

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in a PrefixViT).
        num_classes: head outputs.
        g_layers: G-prompt blocks ``[0, 1]``; g_length: 6 (3 key + 3 value tokens).
        e_layers: E-prompt blocks ``[2, 3, 4]``; pool_size: E = 10 (one entry per task);
            e_length: 20 (10 + 10).
        pull_reduction: ``"sum"`` (official) or ``"mean"`` (query_match.PullReduction).
        prompt_init: U[0, 1) as ``tensor_prompt`` (zoo.py:687).
        generator: RNG for the initialisation.

    After each forward: ``last_routing {e-layer: RoutingOutput((B, 1) entry, ones, cos)}``,
    ``last_prefix {layer: (Pk, Pv)}`` (official layout), ``last_aux_loss`` (training only).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        g_layers: Sequence[int] = (0, 1),
        g_length: int = 6,
        e_layers: Sequence[int] = (2, 3, 4),
        pool_size: int = 10,
        e_length: int = 20,
        pull_reduction: PullReduction = "mean",
        prompt_init: str = "uniform01",
        generator: torch.Generator | None = None,
    ) -> None:
        if not e_layers:
            raise ValueError("e_layers: give at least one E-prompt block")
        prefix_lengths(e_length, "split")  # positive and even
        if g_layers:
            prefix_lengths(g_length, "split")
        if pool_size < 1:
            raise ValueError(f"pool_size: must be >= 1 (one entry per task), got {pool_size}")
        self.g_layers, self.e_layers = tuple(int(i) for i in g_layers), tuple(int(i) for i in e_layers)
        super().__init__(backbone, num_classes, sorted(set(self.g_layers) | set(self.e_layers)))
        self.pool_size, self.pull_reduction = pool_size, pull_reduction
        D = self.vit.embed_dim
        self.g_prompts = nn.Parameter(init_prompt_(torch.empty(len(self.g_layers), g_length, D), prompt_init, generator))
        self.e_prompts = nn.Parameter(
            init_prompt_(torch.empty(len(self.e_layers), pool_size, e_length, D), prompt_init, generator)
        )
        self.e_keys = nn.Parameter(init_prompt_(torch.empty(len(self.e_layers), pool_size, D), prompt_init, generator))
        self.last_routing: dict[int, RoutingOutput] = {}
        self.last_prefix: dict[int, tuple[Tensor, Tensor]] = {}
        self.last_aux_loss: Tensor | None = None
        self.last_layer_losses: dict[int, Tensor] = {}

    def check_task(self, task_id: int) -> None:
        """``ValueError`` unless task ``task_id`` has a pool entry."""
        if not 0 <= task_id < self.pool_size:
            raise ValueError(
                f"task {task_id}: DualPrompt has one E-prompt per task and pool_size={self.pool_size}; "
                f"set pool_size to at least the number of experiences"
            )

    def forward_features(self, x: Tensor, task_ids: Tensor | int | None = None) -> Tensor:
        """Prompted features ``(B, D)``: E-prompt of ``task_ids`` (int or ``(B,)``), or per-layer top-1
        when ``None``; the pull term is computed in training mode when a task id is given."""
        q = self.plain_features(x)
        B, H = x.shape[0], self.vit.num_heads
        if isinstance(task_ids, int):
            self.check_task(task_ids)
            task_ids = torch.full((B,), task_ids, dtype=torch.long, device=x.device)
        official: dict[int, tuple[Tensor, Tensor]] = {}
        routing, losses = {}, {}
        for pos, layer in enumerate(self.e_layers):
            cos = cosine_scores(q, self.e_keys[pos])
            idx = cos.topk(1, dim=1).indices if task_ids is None else task_ids.long().view(B, 1)
            ek, ev = split_prompt(self.e_prompts[pos][idx[:, 0]])  # (B, L/2, D)
            official[layer] = (ek, ev)
            routing[layer] = RoutingOutput(idx, torch.ones_like(idx, dtype=cos.dtype), cos)
            if self.training and task_ids is not None:
                losses[layer] = pull_loss(cos, idx, self.pull_reduction)
        for pos, layer in enumerate(self.g_layers):
            gk, gv = split_prompt(self.g_prompts[pos].expand(B, -1, -1))
            if layer in official:  # [E; G] before the tokens (zoo.py:630-633)
                ek, ev = official[layer]
                gk, gv = torch.cat([ek, gk], dim=1), torch.cat([ev, gv], dim=1)
            official[layer] = (gk, gv)
        prefix = {layer: (prefix_from_official(k, H), prefix_from_official(v, H)) for layer, (k, v) in official.items()}
        self.last_routing, self.last_prefix = routing, official
        self.last_layer_losses = losses
        self.last_aux_loss = torch.stack(list(losses.values())).sum() if losses else None
        self.last_features = self.vit(x, prefix)
        return self.last_features

    def forward(self, x: Tensor, task_ids: Tensor | int | None = None) -> Tensor:
        """Logits ``(B, num_classes)``: query pass, prompted pass, head."""
        return self.head(self.forward_features(x, task_ids))
