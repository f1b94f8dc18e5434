"""Heads that sit on the engine's pooled features (torch only)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["TaskIdentityHead", "mask_logits"]

MASK_VALUE = -1e4  # large finite negative: no loss or metric becomes infinite (DECISIONS.md §C2)


def mask_logits(logits: Tensor, allowed: Tensor | None, value: float = MASK_VALUE) -> Tensor:
    """Set the logits of classes outside ``allowed`` (a bool ``(C,)`` mask) to ``value``."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed.to(logits.device), value)


class TaskIdentityHead(nn.Module):
    """HiDe's TII head on unprompted features: a residual MLP ``D → 2D → D`` + LayerNorm, then a
    linear classifier over all classes (``original_model_mlp_structure=[2]`` in HiDe-Prompt)."""

    def __init__(self, dim: int, num_classes: int, hidden_ratio: int = 2) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_ratio * dim), nn.GELU(), nn.Linear(hidden_ratio * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.norm(features + self.mlp(features)))


