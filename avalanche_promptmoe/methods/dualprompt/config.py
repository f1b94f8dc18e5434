"""DualPrompt's settings: the CODA-Prompt code base's DualPrompt (GT-RIPL/CODA-Prompt@6417d4f)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...prompts.pool import InitName
from ..query_match_config import QueryMatchConfig, check_prompt_length

__all__ = ["DualPromptConfig"]


@dataclass(frozen=True)
class DualPromptConfig(QueryMatchConfig):
    """DualPrompt (Wang et al., ECCV 2022, as re-implemented in CODA-Prompt): shared G-prompts in the
    first blocks, one E-prompt and key per task in the next ones (the task's own in training, top-1
    by key at inference, per layer), all as prefix keys/values.

    Defaults: ``experiments/cifar-100.sh:40`` ``--prompt_param 10 20 6`` and
    ``configs/cifar-100_prompt.yaml`` (Adam, lr 0.001, cosine, 20 epochs, batch 128). Layers are
    hard-coded in ``models/zoo.py:560-570``.

    Attributes:
        g_layers: ``[0, 1]``; g_length: 6 (3 key + 3 value tokens).
        e_layers: ``[2, 3, 4]``; pool_size: 10 E-prompts (one per task; at least the number of
            experiences); e_length: 20 (10 + 10).
        prompt_init: U[0, 1) (``tensor_prompt``, zoo.py:687).

    ``recipe = "official"``: pull term ``Σ_b (1 − cos[b, t])`` summed over the batch (zoo.py:593);
    ``"ours"``: its batch mean (the same direction; independent of the batch size).
    """

    g_layers: tuple[int, ...] = (0, 1)
    g_length: int = 6
    e_layers: tuple[int, ...] = (2, 3, 4)
    pool_size: int = 10
    e_length: int = 20
    prompt_init: InitName = "uniform01"

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"g_layers", "g_length", "e_layers", "pool_size", "e_length"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"pool_size", "e_length"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.e_layers:
            raise ValueError("e_layers: give at least one E-prompt block")
        check_prompt_length("e_length", self.e_length)
        if self.g_layers:
            check_prompt_length("g_length", self.g_length)

    @property
    def pull_reduction(self) -> str:
        return "sum" if self.recipe == "official" else "mean"
