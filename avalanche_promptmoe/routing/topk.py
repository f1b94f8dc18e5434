"""Top-K selection with softmax weights over the selected experts.

Legend: ``...`` any leading dims (batch, or batch × heads), E experts, K selected.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["RoutingOutput", "check_top_k", "dense_weights", "top_k_route"]


class RoutingOutput(NamedTuple):
    """indices ``(..., K)`` (distinct, in range), weights ``(..., K)`` (≥ 0, sum 1), scores ``(..., E)``
    (the scores the choice was made on, after noise and penalty)."""

    indices: Tensor
    weights: Tensor
    scores: Tensor


def check_top_k(k: int, num_experts: int, name: str = "top_k") -> int:
    """Validate ``1 ≤ k ≤ num_experts``; raise ``ValueError`` naming ``name`` otherwise."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name}: must be an int, got {k!r}")
    if not 1 <= k <= num_experts:
        raise ValueError(f"{name}: must be in [1, {num_experts}] (the number of experts), got {k}")
    return k


def top_k_route(scores: Tensor, k: int, *, penalty: Tensor | None = None) -> RoutingOutput:
    """Pick the K highest (penalised) scores and softmax-normalise them.

    Args:
        scores: ``(..., E)`` router scores.
        k: experts to select, ``1 ≤ k ≤ E``.
        penalty: optional ``(E,)`` or broadcastable term subtracted before selection; the weights use
            the penalised scores too (METHODS.md §1.2, note b).
    """
    check_top_k(k, scores.shape[-1], "top_k")
    if penalty is not None:
        scores = scores - penalty
    top_scores, indices = torch.topk(scores, k, dim=-1, sorted=True)
    weights = torch.softmax(top_scores.float(), dim=-1).to(scores.dtype)
    return RoutingOutput(indices, weights, scores)


def dense_weights(routing: RoutingOutput, num_experts: int) -> Tensor:
    """Scatter the K weights into a dense ``(..., E)`` tensor (zeros elsewhere)."""
    dense = routing.weights.new_zeros(*routing.weights.shape[:-1], num_experts)
    return dense.scatter(-1, routing.indices, routing.weights)
