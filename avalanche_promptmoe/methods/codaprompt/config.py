"""CODA-Prompt's settings: its official code (GT-RIPL/CODA-Prompt@6417d4f)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..query_match_config import QueryMatchConfig, check_prompt_length

__all__ = ["CODAPromptConfig"]


@dataclass(frozen=True)
class CODAPromptConfig(QueryMatchConfig):
    """CODA-Prompt (Smith et al., CVPR 2023): per prompted layer, prompt components with keys and
    attention vectors, weighted per sample by ``cos(q ⊙ A, K)`` and summed into a prefix.

    Defaults: ``experiments/cifar-100.sh:29`` ``--prompt_param 100 8 0.0`` (100 components over 10
    tasks = 10 per task, length 8, ortho weight 0) and ``configs/cifar-100_prompt.yaml`` (Adam, lr
    0.001, cosine, 20 epochs, batch 128). Layers ``[0..4]`` are hard-coded (zoo.py:373).

    Attributes:
        layers: prompted blocks. components_per_task: 10 (pool / n_tasks; the pool grows per task,
            and components · tasks must not exceed the ViT width). length: 8 (4 key + 4 value
            tokens). ortho_mu: 0.0 (0.1 in the paper-era script, CODA-Prompt@22948d2).

    ``recipe = "official"`` changes nothing: no behaviour of ours differs from the official code.
    """

    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    components_per_task: int = 10
    length: int = 8
    ortho_mu: float = 0.0

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "components_per_task", "length"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"components_per_task", "length"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers:
            raise ValueError("layers: give at least one prompted block")
        check_prompt_length("length", self.length)
