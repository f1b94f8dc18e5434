"""Routing: scores → (noise) → (history penalty) → top-K → weights. Imports only torch."""

from .history import (
    ExpertUsage,
    adaptive_noise,
    count_selections,
    history_penalty,
    scale_frequent_grads,
    scale_frequent_update,
)
from .routers import TaskGatedRouter, prompt_attention_scores
from .topk import RoutingOutput, check_top_k, dense_weights, top_k_route

__all__ = [
    "ExpertUsage",
    "RoutingOutput",
    "TaskGatedRouter",
    "adaptive_noise",
    "check_top_k",
    "count_selections",
    "dense_weights",
    "history_penalty",
    "prompt_attention_scores",
    "scale_frequent_grads",
    "scale_frequent_update",
    "top_k_route",
]
