"""Training layer: strategy base (the loop), plugins, checkpointing/ and the HiDe phases.

Names are exported lazily (module ``__getattr__``): importing this package imports neither
Avalanche nor any submodule. Add ``name -> module`` entries to ``_LAZY`` and ``__all__``.
"""

from __future__ import annotations

from avalanche_promptmoe._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "CHECKPOINT_FORMAT": "avalanche_promptmoe.training.checkpointing.checkpoint",
    "CHECKPOINT_VERSION": "avalanche_promptmoe.training.checkpointing.checkpoint",
    "CheckpointError": "avalanche_promptmoe.training.checkpointing.checkpoint",
    "capture_rng_state": "avalanche_promptmoe.training.checkpointing.checkpoint",
    "load_checkpoint_file": "avalanche_promptmoe.training.checkpointing.checkpoint",
    "restore_rng_state": "avalanche_promptmoe.training.checkpointing.checkpoint",
    "save_checkpoint_file": "avalanche_promptmoe.training.checkpointing.checkpoint",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
