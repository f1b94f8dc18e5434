"""The checkpoint file format, at the import path users know (README: ``migrate_checkpoint_file``).

The code lives in :mod:`avalanche_promptmoe.training.checkpointing.checkpoint`; this module
re-exports its public names.
"""

from __future__ import annotations

from .checkpointing.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    capture_rng_state,
    load_checkpoint_file,
    migrate_checkpoint_file,
    restore_rng_state,
    save_checkpoint_file,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint_file",
    "migrate_checkpoint_file",
    "restore_rng_state",
    "save_checkpoint_file",
]
