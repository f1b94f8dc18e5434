"""L2P(++)'s settings: the CODA-Prompt code base's L2P (GT-RIPL/CODA-Prompt@6417d4f)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...prompts.pool import InitName
from ...routing import check_top_k
from ..query_match_config import QueryMatchConfig, check_prompt_length

__all__ = ["L2PConfig"]


@dataclass(frozen=True)
class L2PConfig(QueryMatchConfig):
    """L2P++ (Wang et al., CVPR 2022, as re-implemented in CODA-Prompt): a pool of prompts matched to
    the frozen ViT's [CLS] query by learnable keys, top-k per sample, used as prefix keys/values.

    Defaults: ``experiments/cifar-100.sh:51`` ``--prompt_param 30 20 -1`` and
    ``configs/cifar-100_prompt.yaml`` (Adam, lr 0.001, cosine, 20 epochs, batch 128, one lr for the
    prompts, keys and head). ``top_k = 5`` is hard-coded in ``models/zoo.py:662``.

    Attributes:
        layers: prompted blocks (``e_layers = [0]``; ``[0..4]`` with ``prompt_param[2] > 0``).
        pool_size: 30 prompts per layer; length: 20 (10 key + 10 value tokens); top_k: 5.
        prompt_init: U[0, 1) for prompts and keys (``tensor_prompt``, zoo.py:687).

    ``recipe = "official"``: the official pull term ``(1 − cos[:, idx]).sum()``, which compares every
    sample with every sample's selected keys (B·B·k terms); ``"ours"``: the per-sample term, summed
    over the k selected keys and averaged over the batch (docs/methods.md "L2P, DualPrompt, CODA-P").
    """

    layers: tuple[int, ...] = (0,)
    pool_size: int = 30
    length: int = 20
    top_k: int = 5
    prompt_init: InitName = "uniform01"

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "pool_size", "length"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"pool_size", "length", "top_k"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_top_k(self.top_k, self.pool_size)
        if not self.layers:
            raise ValueError("layers: give at least one prompted block")
        check_prompt_length("length", self.length)

    @property
    def pull_reduction(self) -> str:
        return "cross_sum" if self.recipe == "official" else "mean"
