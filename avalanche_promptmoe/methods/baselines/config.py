"""Baseline settings (DECISIONS.md §D)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ...prompts.layouts import PrefixLayout
from ...prompts.pool import InitName
from ...training.config import LRSchedule, MethodConfig, OptimizerName
from ...training.hide import HiDeConfig

__all__ = ["HiDeBaselineConfig", "JointPromptConfig", "LinearProbeConfig", "SequentialPromptConfig"]


@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    """Frozen backbone, no prompts, a linear head trained on each experience in turn."""

    epochs: int = 20
    lr: float = 0.005
    head_lr_scale: float = 1.0
    optimizer: OptimizerName = "adamw"


@dataclass(frozen=True)
class SequentialPromptConfig(MethodConfig):
    """One prefix prompt with SMoPE's layers (blocks 0–5) and length (50 = 25 keys + 25 values,
    "split" convention) and the head, trained on each experience in turn (``seq``) or on the union
    of experiences so far (``joint``). Optimiser as SMoPE (AdamW, prompt lr 0.025, head 0.005).

    Attributes:
        layers: prompted blocks (SMoPE's 0–5).
        length: prompt length, 50 = 25 keys + 25 values ("split" convention).
        prompt_init: initialisation of the prompt, U(0, 1) as SMoPE.
    """

    epochs: int = 20
    lr: float = 0.025
    head_lr_scale: float = 0.2
    optimizer: OptimizerName = "adamw"
    lr_schedule: LRSchedule = "cosine"
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    length: int = 50
    prompt_init: InitName = "uniform01"

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "length"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"length"})


@dataclass(frozen=True)
class JointPromptConfig(SequentialPromptConfig):
    """``seq``'s prompt, head and optimiser, trained at step t on the union of experiences 0..t.

    Attributes:
        restart: ``True`` (default): every step trains the prompt and head afresh from their initial
            values, so row t of the accuracy matrix is the model jointly trained on experiences
            0..t — the classic joint-training bound, in which every image is seen ``epochs`` times.
            ``False``: each step continues from step t−1, so the first experience's images have been
            seen ``(t+1)·epochs`` times by step t; on small data the early experiences then overfit
            and the late ones underfit (ci/README.md measures both).
    """

    restart: bool = True


@dataclass(frozen=True)
class HiDeBaselineConfig(HiDeConfig):
    """HiDe-Prompt: one prefix prompt per task (no routing), TII, WTP, TAP (METHODS.md §3).

    Attributes:
        layers: ``e_prompt_layer_idx`` = blocks 0–4.
        length: 5 key and 5 value tokens (CIFAR; 20 for ImageNet-R and CUB).
        prompt_momentum: m = 0.01: task t trains (1 − m)·P_t + m·mean(P_<t) and keeps that mix.
        prompt_init: U(−1, 1).
        prefix_layout: ``"kv"`` (ours: each sample attends to its own prompt's keys and values) or
            ``"hide_official"`` (the official batch reshape, prompts/layouts.py) in every prompted
            pass: training, class statistics and evaluation.
        recipe: ``"official"`` requires the official value of every item in :attr:`OFFICIAL`
            (docs/methods.md "Conformance"); ``"ours"`` lets each be chosen (ablations).
    """

    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    length: int = 5
    prompt_momentum: float = 0.01
    prompt_init: InitName = "uniform_pm1"
    prefix_layout: PrefixLayout = "kv"

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "length"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"length"})
    HAS_OFFICIAL_RECIPE: ClassVar[bool] = True  # thu-ml/HiDe-Prompt
    #: What ``recipe="official"`` fixes (thu-ml/HiDe-Prompt @0ed43333; sources in docs/methods.md "Recipes").
    OFFICIAL: ClassVar[dict[str, Any]] = {
        "prefix_layout": "hide_official", "kmeans": "sklearn", "eval_seen_mask": False, "bf16_autocast": False,
        "lr_rank_scaling": True,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.prompt_momentum < 1:
            raise ValueError(f"prompt_momentum: must be in [0, 1), got {self.prompt_momentum}")
        if self.recipe == "official":
            wrong = {k: getattr(self, k) for k, v in self.OFFICIAL.items() if getattr(self, k) != v}
            if wrong:
                fix = ", ".join(f"{k}={self.OFFICIAL[k]!r}" for k in wrong)
                raise ValueError(f"recipe='official': {wrong} are not the official code's values; set {fix} "
                                 f"(or recipe='ours' to mix them)")
