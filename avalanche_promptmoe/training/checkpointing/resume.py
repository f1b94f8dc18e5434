"""Checks of a strategy checkpoint before anything is restored (issue #13 items 2 and 3).

``PromptStrategyBase.resume_from`` reads the file (digest verified by
:func:`~avalanche_promptmoe.training.checkpointing.checkpoint.load_checkpoint_file`), then calls
:func:`check_checkpoint_payload` and :func:`settings_overrides` — both pure — and only then
mutates the strategy, so a bad checkpoint never leaves a half-restored strategy behind.

Settings rule: a config field listed in the config class's ``STRUCTURAL`` set (layers, experts,
lengths...), ``num_classes`` and the backbone must match the checkpoint; every other field (learning
rates, optimizers, epochs, schedules, phase epochs, method weights...) may differ and is returned as
an override ``{field: (checkpoint value, current value)}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import MethodConfig
from ..validation import class_set
from .checkpoint import CheckpointError

__all__ = ["check_checkpoint_payload", "format_overrides", "settings_overrides"]

# key -> (accepted types, description)
_REQUIRED: dict[str, tuple[tuple[type, ...], str]] = {
    "strategy": ((str,), "a str"),
    "method": ((str,), "a str"),
    "config": ((dict,), "a dict"),
    "num_classes": ((int,), "an int"),
    "seed": ((int,), "an int"),
    "backbone": ((dict,), "a dict"),
    "model_structure": ((dict,), "a dict"),
    "model_state": ((dict,), "a dict of tensors"),
    "task_classes": ((list,), "a list of lists of class ids"),
    "trained_experiences": ((int,), "an int"),
    "method_state": ((dict,), "a dict"),
    "plugins": ((dict,), "a dict"),
    "rng": ((dict,), "a dict"),
    "generator": ((torch.Tensor,), "a uint8 tensor"),
}


def check_checkpoint_payload(state: Mapping[str, Any], path: str | Path) -> None:
    """Every key ``resume_from`` reads is present with the right type (nothing is mutated).

    Raises:
        CheckpointError: naming the file and every missing or mistyped key.
    """
    problems = []
    for key, (types_, what) in _REQUIRED.items():
        if key not in state:
            problems.append(f"{key!r} is missing")
        elif not isinstance(state[key], types_) or (types_ == (int,) and isinstance(state[key], bool)):
            problems.append(f"{key!r} should be {what}, got {type(state[key]).__name__}")
    if not problems:
        bad = [k for k, v in state["model_state"].items() if not isinstance(v, torch.Tensor)]
        if bad:
            problems.append(f"'model_state' holds non-tensors at {bad[:5]}")
        tasks = state["task_classes"]
        if not all(isinstance(c, list) and all(type(i) is int for i in c) for c in tasks):
            problems.append("'task_classes' should be a list of lists of int class ids")
        rng_missing = [k for k in ("python", "numpy", "torch") if k not in state["rng"]]
        if rng_missing:
            problems.append(f"'rng' lacks {rng_missing}")
        if "fingerprint" not in state["backbone"]:
            problems.append("'backbone' lacks its 'fingerprint'")
        bad_plugins = [k for k, v in state["plugins"].items() if not isinstance(v, dict)]
        if bad_plugins:
            problems.append(f"'plugins' entries {bad_plugins} are not dicts")
    if problems:
        raise CheckpointError(
            f"{path} is not a complete strategy checkpoint: " + "; ".join(problems) + " (nothing was restored)"
        )


def settings_overrides(
    saved: Mapping[str, Any], cfg: MethodConfig, path: str | Path
) -> dict[str, tuple[Any, Any]]:
    """Compare a checkpoint's config dict with the strategy's config.

    Returns:
        ``{field: (checkpoint value, current value)}`` for every non-structural field that differs
        (fields the checkpoint does not know take the current value and are listed with ``None``).

    Raises:
        ValueError: structural fields differ; the message lists each as ``field: old -> new``.
    """
    current = cfg.to_dict()
    structural = class_set(type(cfg), "STRUCTURAL")
    refused, overrides = {}, {}
    for key, now in current.items():
        if key not in saved:
            overrides[key] = (None, now)
            continue
        old = saved[key]
        if old == now:
            continue
        if key in structural:
            refused[key] = (old, now)
        else:
            overrides[key] = (old, now)
    for key in sorted(set(saved) - set(current)):  # a field this version no longer has
        overrides[key] = (saved[key], None)
    if refused:
        raise ValueError(
            f"checkpoint: {path} was made with other structural settings ({format_overrides(refused)}); "
            f"these shape the model and cannot change on resume — build the strategy with the checkpoint's "
            f"values (settings such as {', '.join(sorted(set(current) - structural)[:4])}... may differ)"
        )
    return overrides


def format_overrides(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """``"lr: 0.5 -> 0.01, epochs: 3 -> 2"``."""
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
