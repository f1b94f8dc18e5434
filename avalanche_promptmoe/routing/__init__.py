"""Routing: scores → (noise) → (history penalty) → top-K → weights. Imports only torch."""

from .history import (
    ExpertUsage,
    ScoreReading,
    adaptive_noise,
    count_selections,
    history_penalty,
    read_scores,
    scale_frequent_grads,
    scale_frequent_update,
    standardise_scores,
)
from .routers import RouterInit, TaskGatedRouter, prompt_attention_scores
from .topk import RoutingOutput, check_top_k, dense_weights, top_k_route

__all__ = [
    "ExpertUsage",
    "RouterInit",
    "RoutingOutput",
    "ScoreReading",
    "TaskGatedRouter",
    "adaptive_noise",
    "check_top_k",
    "count_selections",
    "dense_weights",
    "history_penalty",
    "prompt_attention_scores",
    "read_scores",
    "scale_frequent_grads",
    "scale_frequent_update",
    "standardise_scores",
    "top_k_route",
]
