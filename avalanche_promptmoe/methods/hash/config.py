"""Hash's settings (METHODS.md §1; values from the paper's seed summary where the notes give none)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ...prompts.pool import InitName
from ...routing import ScoreReading, check_top_k
from ...training.hide import HiDeConfig
from .model import HashRouterInit

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
        delta: δ = 0.4, the stepwise routing penalty on the frequent set (HDR), in the units of
            ``score_reading``.
        score_reading: the units the penalty reads the router scores in (the paper gives none;
            docs/methods.md "Hash"): ``"standardised"`` (default since issue #18) — per sample over
            the experts, ``(s − mean_e s)/std_e s``, so δ is in units of the score spread whatever
            the router's scale, and the frequent experts keep a share of the selections;
            ``"raw"`` — ``s = mean_n(x W_r)/√d`` as the paper's equation writes it (with the
            Kaiming router δ = 0.4 then removes the frequent experts from every top-K).
        router_init: a new task's router (the paper gives no initialisation): ``"kaiming"`` —
            U(±1/√d) like ``nn.Linear`` (a fresh router's scores lie within about 0.1 of each
            other, so δ = 0.4 removes the frequent experts from every top-K); ``"uniform_pm1"`` —
            U(−1, 1) like the prompts (score spread of order 1: δ = 0.4 is a soft penalty at task
            start); ``"copy_previous"`` — the previous task's router, so the experts the history
            made popular start with the scores they earned (the first task's is Kaiming).
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
    score_reading: ScoreReading = "standardised"
    router_init: HashRouterInit = "kaiming"

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "num_experts", "length", "top_k"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"num_experts", "length", "top_k", "alpha"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_top_k(self.top_k, self.num_experts)
        if self.delta < 0:
            raise ValueError(f"delta: must be >= 0, got {self.delta}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha: must be in (0, 1], got {self.alpha}")
