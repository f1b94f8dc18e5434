"""HLGP's settings (METHODS.md §4). The paper gives only L = 10 and a Gaussian root initialisation;
every other value is our choice, documented in docs/methods.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...prompts.layer_grouped import PIEMode, check_layer_groups
from ...training.config import LRSchedule
from ...training.hide import HiDeConfig, Phase

__all__ = ["HLGPConfig"]

_PHASES = ("wtp", "tap")


@dataclass(frozen=True)
class HLGPConfig(HiDeConfig):
    """HLGP = per-task root prompts → layer-group sub-prompts (adapters) + Position Incentive
    Embeddings, copied forward task to task, fused at inference by Soft Task Matching.

    Inherits HiDe's TAP settings (``tap_*``, ``samples_per_class``); the TII fields are unused (HLGP
    infers the task by SoTM) and ``contrastive_weight`` defaults to 0 (not in the paper).

    Attributes:
        epochs, lr, head_lr_scale, lr_schedule: Adam, prompt lr 0.01, head lr 0.005, 20 epochs, cosine
            per epoch (CODA-Prompt / SMoPE-like; the paper gives none). clip_grad 1.0 (HiDe).
        phases: ``("wtp", "tap")``; TAP (HiDe's head realignment on class Gaussians) is our addition.
        layers: prompted blocks 0–5 (SMoPE's).
        groups: their partition into layer groups.
        length: L = 10 key and 10 value tokens per layer (the paper's example).
        rank: adapter bottleneck r = 32.
        share_kv_adapter: one adapter per group for the key and value roots (True) or one each.
        pie: Position Incentive Embedding: ``"per_task"`` (copied forward), ``"shared"`` (trained
            on the first task, then frozen) or ``"none"``.
        root_std: σ of the first task's Gaussian root, N(0, σ²).
        matching: ``"soft"`` (SoTM) or ``"hard"`` (argmax task) at inference without task ids.
        match_tau: SoTM softmax temperature τ on cosine scores.
    """

    epochs: int = 20
    lr: float = 0.01
    head_lr_scale: float = 0.5
    lr_schedule: LRSchedule = "cosine"
    phases: tuple[Phase, ...] = ("wtp", "tap")
    contrastive_weight: float = 0.0
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    groups: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5))
    length: int = 10
    rank: int = 32
    share_kv_adapter: bool = True
    pie: PIEMode = "per_task"
    root_std: float = 0.02
    matching: Literal["soft", "hard"] = "soft"
    match_tau: float = 0.1

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset(
        {"layers", "groups", "length", "rank", "share_kv_adapter", "pie"}
    )
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"length", "rank", "root_std", "match_tau"})

    def __post_init__(self) -> None:
        super().__post_init__()
        # normalise nested sequences (TOML lists, checkpoint round trips) to tuples of ints
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "groups", tuple(tuple(int(i) for i in g) for g in self.groups))
        check_layer_groups(self.layers, self.groups)
        unknown = sorted(set(self.phases) - set(_PHASES))
        if unknown:
            raise ValueError(
                f"phases: {unknown} not supported; HLGP runs a subset of {_PHASES} (it infers the task by "
                f"soft task matching, not TII)"
            )
        if self.length < 1 or self.rank < 1:
            raise ValueError(f"length, rank: must be >= 1, got {self.length}, {self.rank}")
        if self.match_tau <= 0 or self.root_std <= 0:
            raise ValueError(f"match_tau, root_std: must be > 0, got {self.match_tau}, {self.root_std}")
