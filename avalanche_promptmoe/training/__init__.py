"""Training layer: strategy base, plugins and checkpoints.

Names are exported lazily (module ``__getattr__``): importing this package imports neither
Avalanche nor any submodule. Add ``name -> module`` entries to ``_LAZY`` and ``__all__``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "CHECKPOINT_FORMAT": "avalanche_promptmoe.training.checkpoint",
    "CHECKPOINT_VERSION": "avalanche_promptmoe.training.checkpoint",
    "CheckpointError": "avalanche_promptmoe.training.checkpoint",
    "capture_rng_state": "avalanche_promptmoe.training.checkpoint",
    "load_checkpoint_file": "avalanche_promptmoe.training.checkpoint",
    "restore_rng_state": "avalanche_promptmoe.training.checkpoint",
    "save_checkpoint_file": "avalanche_promptmoe.training.checkpoint",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
