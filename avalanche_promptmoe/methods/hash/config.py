"""Hash's settings (METHODS.md §1; values from the paper's seed summary where the notes give none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...prompts.pool import InitName
from ...routing import check_top_k
from ...training.hide import HiDeConfig

__all__ = ["HashConfig"]


@dataclass(frozen=True)
class HashConfig(HiDeConfig):
    """Hash = a shared prompt pool with task-gated routers, the history-aware modulator and HiDe's
    TII/WTP/TAP phases.

    Attributes:
        layers: prompted blocks; the paper's "1–4" read as block indices 0–3 (open question, see
            docs/methods.md: HiDe's [0..4] is ``(0, 1, 2, 3, 4)``).
        num_experts: N_r = 15 experts per prompted layer.
        length: L = 15 key and 15 value tokens per expert ("kv_each" convention).
        top_k: K = 2 experts per sample.
        delta: δ = 0.4, the stepwise routing penalty on the frequent set (HDR).
        alpha: HGM's factor on the frequent set (the paper's β = 0.1): their learning rate is α × lr.
        hgm: how HGM applies α — ``"update"`` (default): the frequent experts take α × the step the
            optimizer made, under any optimizer (the paper's "lower learning rate"); ``"grad"``: their
            gradient is multiplied by α, which Adam/AdamW cancel (kept for ablations; with SGD the two
            agree without weight decay).
        prompt_init: pool initialisation, U(−1, 1) as HiDe.
    """

    layers: tuple[int, ...] = (0, 1, 2, 3)
    num_experts: int = 15
    length: int = 15
    top_k: int = 2
    delta: float = 0.4
    alpha: float = 0.1
    prompt_init: InitName = "uniform_pm1"
    hgm: Literal["update", "grad"] = "update"

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "num_experts", "length", "top_k"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"num_experts", "length", "top_k", "alpha"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_top_k(self.top_k, self.num_experts)
        if self.delta < 0:
            raise ValueError(f"delta: must be >= 0, got {self.delta}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {self.alpha}")
