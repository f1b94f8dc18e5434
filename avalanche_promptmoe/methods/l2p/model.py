"""L2P(++) as in the CODA-Prompt code base (``models/zoo.py: L2P``): a key-matched prompt pool per
prompted layer, used as prefix keys/values on the shared engine. Imports only torch and the
torch-only layers.

Per prompted layer l (B batch, E pool entries, k selected, L prompt length, D width, H heads):

    q        = final-LayerNorm [CLS] of the frozen, unprompted ViT            (B, D), no grad
    cos      = normalize(q) · normalize(K_l)ᵀ                                 (B, E)
    idx      = top-k(cos) per sample (descending)                             (B, k)
    Ek[b]    = concat_j P_l[idx[b, j], :L/2],   Ev[b] = concat_j P_l[idx[b, j], L/2:]   (B, k·L/2, D)
    pull     = 1 − cos at the selected keys, reduced as ``pull_reduction`` (query_match.pull_loss)

Training and evaluation forwards are identical (no task id, no noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...prompts import init_prompt_, prefix_lengths
from ...routing import RoutingOutput, check_top_k
from ..model_base import PromptedClassifier
from ..query_match import PullReduction, cosine_scores, prefix_from_official, pull_loss, split_prompt

__all__ = ["L2PModel"]


class L2PModel(PromptedClassifier):
    """Frozen ViT + a key-matched prompt pool per prompted layer (prefix tuning) + linear head.

    Parameters (official layout, one row per prompted layer, position = ``layers.index(l)``):
    ``prompts (layers, E, L, D)`` (rows ``[0, L/2)`` keys, ``[L/2, L)`` values) and ``keys (layers, E, D)``.

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in a PrefixViT).
        num_classes: head outputs.
        layers: prompted blocks (L2P++ ``e_layers = [0]``; ``[0..4]`` for the deep variant).
        pool_size: E = 30; length: L = 20 (10 key + 10 value tokens); top_k: k = 5.
        pull_reduction: how the pull term is reduced (``query_match.PullReduction``).
        prompt_init: U[0, 1) as ``tensor_prompt`` (zoo.py:687).
        generator: RNG for the initialisation.

    After each forward: ``last_routing {layer: RoutingOutput((B, k) indices, uniform weights, cos)}``,
    ``last_prefix {layer: (Ek, Ev)}`` in the official ``(B, k·L/2, D)`` layout, ``last_aux_loss`` (the
    pull term summed over layers, training only, else ``None``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0,),
        pool_size: int = 30,
        length: int = 20,
        top_k: int = 5,
        pull_reduction: PullReduction = "mean",
        prompt_init: str = "uniform01",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, tuple(layers))
        check_top_k(top_k, pool_size)
        prefix_lengths(length, "split")  # even length
        self.pool_size, self.length, self.top_k = pool_size, length, top_k
        self.pull_reduction = pull_reduction
        D, n = self.vit.embed_dim, len(self.layers)
        self.prompts = nn.Parameter(init_prompt_(torch.empty(n, pool_size, length, D), prompt_init, generator))
        self.keys = nn.Parameter(init_prompt_(torch.empty(n, pool_size, D), prompt_init, generator))
        self.last_routing: dict[int, RoutingOutput] = {}
        self.last_prefix: dict[int, tuple[Tensor, Tensor]] = {}
        self.last_aux_loss: Tensor | None = None
        self.last_layer_losses: dict[int, Tensor] = {}

    def forward_features(self, x: Tensor) -> Tensor:
        """Prompted final-LayerNorm [CLS] features ``(B, D)``."""
        q = self.plain_features(x)
        B, H = x.shape[0], self.vit.num_heads
        prefix, routing, official, losses = {}, {}, {}, {}
        for pos, layer in enumerate(self.layers):
            cos = cosine_scores(q, self.keys[pos])
            top = torch.topk(cos, self.top_k, dim=1)
            ek, ev = split_prompt(self.prompts[pos][top.indices])  # (B, k, L/2, D)
            ek, ev = ek.reshape(B, -1, ek.shape[-1]), ev.reshape(B, -1, ev.shape[-1])
            official[layer] = (ek, ev)
            prefix[layer] = (prefix_from_official(ek, H), prefix_from_official(ev, H))
            routing[layer] = RoutingOutput(top.indices, torch.full_like(top.values, 1.0 / self.top_k), cos)
            if self.training:
                losses[layer] = pull_loss(cos, top.indices, self.pull_reduction)
        self.last_routing, self.last_prefix = routing, official
        self.last_layer_losses = losses
        self.last_aux_loss = torch.stack(list(losses.values())).sum() if losses else None
        self.last_features = self.vit(x, prefix)
        return self.last_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``: query pass, prompted pass, head."""
        return self.head(self.forward_features(x))
