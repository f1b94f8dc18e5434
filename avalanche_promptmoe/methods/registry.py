"""Method names → strategy classes (imported on first use)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["METHODS", "get_strategy_class"]

METHODS: dict[str, str] = {
    "hash": "avalanche_promptmoe.methods.hash.strategy:HashPromptStrategy",
    "smope": "avalanche_promptmoe.methods.smope.strategy:SMoPEStrategy",
    "hlgp": "avalanche_promptmoe.methods.hlgp.strategy:LayerGroupedPromptStrategy",
    "hide": "avalanche_promptmoe.methods.baselines.strategy:HiDePromptStrategy",
    "linear": "avalanche_promptmoe.methods.baselines.strategy:LinearProbeStrategy",
    "seq": "avalanche_promptmoe.methods.baselines.strategy:SequentialPromptStrategy",
    "joint": "avalanche_promptmoe.methods.baselines.strategy:JointPromptStrategy",
    "l2p": "avalanche_promptmoe.methods.l2p.strategy:L2PStrategy",
    "dualprompt": "avalanche_promptmoe.methods.dualprompt.strategy:DualPromptStrategy",
    "codaprompt": "avalanche_promptmoe.methods.codaprompt.strategy:CODAPromptStrategy",
}


def get_strategy_class(name: str) -> Any:
    """The strategy class of a method name; ``ValueError`` listing the names for an unknown one."""
    try:
        module, attr = METHODS[name].split(":")
    except KeyError:
        raise ValueError(f"method: unknown {name!r}; choose one of {sorted(METHODS)}") from None
    return getattr(importlib.import_module(module), attr)
