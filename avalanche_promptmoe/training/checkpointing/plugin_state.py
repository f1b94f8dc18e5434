"""Plugin state in checkpoints: which attached plugins are saved, how, and which are refused.

``save_checkpoint`` / ``resume_from`` keep the state of every attached plugin, or refuse; a plugin's
state is never dropped silently. For each plugin in ``strategy.plugins``:

* it has ``state_dict()`` / ``load_state_dict()`` (ours; any user plugin can add the pair): saved;
* Avalanche's ``ReplayPlugin`` with a reservoir-sampling storage policy (the default
  ``ExperienceBalancedBuffer``, ``ClassBalancedBuffer``, ``ReservoirSamplingBuffer``): its buffer is
  saved as tensors of the buffered samples (read through the dataset's *eval* transforms), their
  labels, task labels and reservoir weights; after a resume the buffer holds those tensors, so random
  train-time augmentations no longer apply to the old samples (exact when the data has none);
* Avalanche's plugins without state across experiences (``EarlyStoppingPlugin`` resets itself per
  experience; the evaluator, the clock and periodic eval are handled by the strategy), plugins with
  no instance attributes, and any plugin with ``checkpoint_stateless = True`` (an opt-out: its state
  then starts fresh after a resume): skipped;
* anything else (``EWCPlugin``, ``LwFPlugin``, other replay storage policies, unknown user plugins):
  ``save_checkpoint`` and ``resume_from`` raise :class:`PluginStateError` naming the plugin and both
  ways out. (The snapshot a NaN stop writes skips them, since training is already failing.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["PluginStateError", "ReplayBufferState", "STATELESS_PLUGINS", "checkpoint_plugins"]

STATELESS_PLUGINS = frozenset({"EvaluationPlugin", "Clock", "PeriodicEval", "EarlyStoppingPlugin"})
"""Avalanche plugin classes with nothing to keep across experiences (or kept by the strategy)."""


class PluginStateError(TypeError):
    """A plugin holds state that a checkpoint cannot keep."""


def _has_state(p: Any) -> bool:
    return hasattr(p, "state_dict") and hasattr(p, "load_state_dict") and not isinstance(p, nn.Module)


def checkpoint_plugins(plugins: list[Any], *, strict: bool) -> dict[str, Any]:
    """``{name: object with state_dict/load_state_dict}`` for the plugins whose state a checkpoint keeps.

    Names are the class names (``#i`` appended for a repeated class). With ``strict``, a plugin whose
    state cannot be kept raises :class:`PluginStateError`; otherwise it is skipped.
    """
    from avalanche.training.plugins import ReplayPlugin

    out: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for p in plugins:
        name = type(p).__name__
        if _has_state(p):
            obj: Any = p
        elif isinstance(p, ReplayPlugin) and ReplayBufferState.supports(p):
            obj = ReplayBufferState(p)
        elif name in STATELESS_PLUGINS or getattr(p, "checkpoint_stateless", False) or not vars(p):
            continue
        elif strict:
            raise PluginStateError(
                f"checkpoint: plugin {name} holds state that a checkpoint cannot keep, and resuming without "
                f"it would silently change the run. Either give {name} state_dict()/load_state_dict() "
                f"methods, or mark it stateless with `plugin.checkpoint_stateless = True` (its state then "
                f"starts fresh after resume_from)"
            )
        else:
            continue
        seen[name] = seen.get(name, 0) + 1
        out[name if seen[name] == 1 else f"{name}#{seen[name] - 1}"] = obj
    return out


class ReplayBufferState:
    """``state_dict`` / ``load_state_dict`` for a ``ReplayPlugin``'s reservoir-sampling buffers.

    State (weights-only loadable): ``{"policy": class name, "max_size", "groups": [{"id", "x", "y",
    "t", "weights", "max_size", "arity"}], "extra": {...}}``; ``x`` is the stacked buffered inputs,
    ``arity`` the sample length (2: ``(x, y)``; 3: ``(x, y, task label)``), rebuilt alike.
    """

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin

    @staticmethod
    def supports(plugin: Any) -> bool:
        from avalanche.training.storage_policy import (
            ClassBalancedBuffer,
            ExperienceBalancedBuffer,
            ReservoirSamplingBuffer,
        )

        policy = plugin.storage_policy
        if isinstance(policy, ReservoirSamplingBuffer):
            return True
        return type(policy) in (ExperienceBalancedBuffer, ClassBalancedBuffer) and all(
            isinstance(g, ReservoirSamplingBuffer) for g in policy.buffer_groups.values()
        )

    # -- save
    def state_dict(self) -> dict:
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        policy = self.plugin.storage_policy
        groups = {None: policy} if isinstance(policy, ReservoirSamplingBuffer) else policy.buffer_groups
        return {
            "policy": type(policy).__name__,
            "max_size": int(policy.max_size),
            "groups": [self._group_state(gid, g) for gid, g in groups.items()],
            "extra": {
                "num_exps": int(getattr(policy, "_num_exps", 0)),
                "seen_classes": sorted(int(c) for c in getattr(policy, "seen_classes", ())),
            },
        }

    @staticmethod
    def _group_state(gid: int | None, group: Any) -> dict:
        data = group.buffer.eval() if hasattr(group.buffer, "eval") else group.buffer
        xs, ys, ts, arity = [], [], [], 2
        for i in range(len(data)):
            sample = data[i]
            x = sample[0]
            if not isinstance(x, torch.Tensor):
                raise PluginStateError(
                    f"checkpoint: ReplayPlugin's buffer holds {type(x).__name__} inputs, not tensors; mark the "
                    f"plugin stateless with `plugin.checkpoint_stateless = True` to resume with an empty buffer"
                )
            xs.append(x.detach().cpu())
            ys.append(int(sample[1]))
            ts.append(int(sample[2]) if len(sample) > 2 else 0)
            arity = len(sample)
        return {
            "id": -1 if gid is None else int(gid),
            "x": torch.stack(xs) if xs else torch.zeros(0),
            "y": torch.tensor(ys, dtype=torch.long),
            "t": torch.tensor(ts, dtype=torch.long),
            "weights": group._buffer_weights.detach().cpu().clone(),
            "max_size": int(group.max_size),
            "arity": arity,
        }

    # -- load
    def load_state_dict(self, state: dict) -> None:
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        policy = self.plugin.storage_policy
        if state["policy"] != type(policy).__name__:
            raise ValueError(
                f"checkpoint: the ReplayPlugin was saved with a {state['policy']} storage policy, this one "
                f"has {type(policy).__name__}"
            )
        policy.max_size = int(state["max_size"])
        if isinstance(policy, ReservoirSamplingBuffer):
            self._load_group(policy, state["groups"][0])
            return
        policy.buffer_groups = {}
        for g in state["groups"]:
            buf = ReservoirSamplingBuffer(int(g["max_size"]))
            self._load_group(buf, g)
            policy.buffer_groups[int(g["id"])] = buf
        if hasattr(policy, "_num_exps"):
            policy._num_exps = int(state["extra"]["num_exps"])
        if hasattr(policy, "seen_classes"):
            policy.seen_classes = set(state["extra"]["seen_classes"])

    @staticmethod
    def _load_group(buf: Any, g: dict) -> None:
        from avalanche.benchmarks.utils import as_classification_dataset
        from avalanche.benchmarks.utils.classification_dataset import (
            _make_taskaware_tensor_classification_dataset,
        )

        buf.max_size = int(g["max_size"])
        buf._buffer_weights = g["weights"].clone()
        if not len(g["y"]):
            return
        if int(g.get("arity", 3)) >= 3:  # samples (x, y, task label), as the stream's datasets gave them
            buf.buffer = _make_taskaware_tensor_classification_dataset(
                g["x"], g["y"], targets=g["y"].tolist(), task_labels=g["t"].tolist()
            )
        else:  # samples (x, y): a plain classification dataset, as class_incremental_benchmark's
            data = TensorDataset(g["x"], g["y"])
            data.targets = g["y"].tolist()
            buf.buffer = as_classification_dataset(data)
