"""What the configs of L2P, DualPrompt and CODA-Prompt share: the official CODA-Prompt optimisation
(``configs/cifar-100_prompt.yaml``: Adam β = (0.9, 0.999), lr 0.001, weight decay 0, cosine over
20 epochs; ``learners/prompt.py``: one learning rate for the prompts and the head)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..training.config import LRSchedule, MethodConfig, OptimizerName

__all__ = ["QueryMatchConfig", "check_prompt_length"]


def check_prompt_length(name: str, length: int) -> None:
    """``ValueError`` naming ``name`` unless ``length`` is positive and even (half keys, half values)."""
    if length < 2 or length % 2:
        raise ValueError(f"{name}: half keys, half values, so it must be even and positive, got {length}")


@dataclass(frozen=True)
class QueryMatchConfig(MethodConfig):
    """The official CODA-Prompt code base's optimisation; its methods have official code."""

    epochs: int = 20
    lr: float = 0.001
    head_lr_scale: float = 1.0
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    lr_schedule: LRSchedule = "cosine"

    HAS_OFFICIAL_RECIPE: ClassVar[bool] = True  # GT-RIPL/CODA-Prompt models/zoo.py
