"""Training layer: strategy base, plugins and checkpoints.

Names are exported lazily (module ``__getattr__``): importing this package imports neither
Avalanche nor any submodule. Add ``name -> module`` entries to ``_LAZY`` and ``__all__``.
"""

from __future__ import annotations

from avalanche_promptmoe._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
