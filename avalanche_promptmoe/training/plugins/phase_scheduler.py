"""``PhaseSchedulerPlugin``: HiDe's phases per task — TII, then WTP (the training loop), then TAP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from avalanche.core import SupervisedPlugin

__all__ = ["PhaseSchedulerPlugin", "PHASES"]

PHASES = ("tii", "wtp", "tap")


class PhaseSchedulerPlugin(SupervisedPlugin, supports_distributed=False):
    """Runs task-identity inference training before, and head alignment after, each experience.

    WTP is the strategy's ordinary training loop. The plugin calls ``strategy.run_tii_phase()`` in
    ``before_training_exp`` and ``strategy.run_tap_phase()`` in ``after_training_exp``; any strategy
    with those two methods (see ``training.hide.HiDePhases``) can use it. A phase missing from
    ``phases`` is skipped (ablations: ``phases=("wtp", "tap")``...).

    Args:
        phases: which of ``("tii", "wtp", "tap")`` run, always in that order.
    """

    def __init__(self, *, phases: Sequence[str] = PHASES) -> None:
        super().__init__()
        unknown = sorted(set(phases) - set(PHASES))
        if unknown:
            raise ValueError(f"phases: unknown {unknown}; expected a subset of {PHASES}")
        self.phases = tuple(p for p in PHASES if p in phases)
        self.completed: list[list[str]] = []  # phases run per task, for reports and resume checks

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.completed.append([])
        if "tii" in self.phases:
            strategy.run_tii_phase()
            self.completed[-1].append("tii")
        if "wtp" in self.phases:
            self.completed[-1].append("wtp")
        elif hasattr(strategy, "stop_training"):
            strategy.stop_training()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if "tap" in self.phases:
            strategy.run_tap_phase()
            self.completed[-1].append("tap")

    def state_dict(self) -> dict:
        return {"phases": list(self.phases), "completed": [list(c) for c in self.completed]}

    def load_state_dict(self, state: dict) -> None:
        self.phases = tuple(state["phases"])
        self.completed = [list(c) for c in state["completed"]]

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Check the strategy has the enabled phases (:mod:`..protocols`) before any step."""
        from ..protocols import TAPPhaseStrategy, TIIPhaseStrategy, require

        needed = [p for name, p in (("tii", TIIPhaseStrategy), ("tap", TAPPhaseStrategy)) if name in self.phases]
        require(self, strategy, needed, role="strategy")
