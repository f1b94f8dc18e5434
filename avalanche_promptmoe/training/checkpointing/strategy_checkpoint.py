"""Checkpoint and resume of :class:`~avalanche_promptmoe.training.base_strategy.PromptStrategyBase` (a mixin).

``save_checkpoint(path)`` writes, between experiences, everything needed to continue exactly (the
trainable state, every attached plugin's, metric's and logger's state or a refusal —
:mod:`.plugin_state` —, RNG states, position) in our own format (:mod:`.checkpoint`);
``resume_from(path)`` checks all of it before any state changes (:mod:`.resume`, and a dry run of the
model's ``grow_to`` + ``load_state_dict`` on a copy sharing the frozen backbone), then restores. A
non-finite training loss stops training with a checkpoint of the state before the failing
experience (:meth:`CheckpointingMixin._nan_stop`). The frozen backbone is not saved: it is rebuilt
from the constructor and verified by :func:`weights_fingerprint`.

Issue #22: a non-finite state is never written (``save_checkpoint`` refuses it, the NaN stop names the
last finite checkpoint or says to restart); ``resume_from`` checks the seed (an explicit
``allow_seed_change=True`` records it as an override) and refuses a strategy that trained past the
checkpoint; ``~`` is expanded; several loggers of one type each keep their own state.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...paths import user_path
from ..distributed import barrier, is_main_process
from ..state_safety import copy_sharing_backbone, nonfinite_keys
from .checkpoint import capture_rng_state, load_checkpoint_file, restore_rng_state, save_checkpoint_file
from .plugin_state import checkpoint_plugins
from .resume import check_checkpoint_payload, format_overrides, settings_overrides

__all__ = ["CheckpointingMixin", "weights_fingerprint"]

# the logger of base_strategy, so that logging settings made for the strategy cover its mixins too
log = logging.getLogger("avalanche_promptmoe.training.base_strategy")


class CheckpointingMixin:
    """``save_checkpoint`` / ``resume_from`` / the NaN stop of ``PromptStrategyBase`` (its
    attributes are set in ``PromptStrategyBase.__init__``)."""

    def _nan_stop(self, reason: str | None = None) -> None:
        """Stop training: write the finite state before this experience as the resume point and raise
        ``FloatingPointError`` naming it (or the last finite checkpoint, or saying to restart)."""
        index = self.trained_experiences
        reason = reason or f"non-finite training loss in experience {index} (epoch {self.clock.train_exp_epochs})"
        path = self.checkpoint_dir / f"nan_stop_experience{index}.pt"
        state = self._pre_experience_state or self.state_dict_for_checkpoint()
        error: OSError | None = None
        if not nonfinite_keys(state):
            try:
                if is_main_process():
                    save_checkpoint_file(path, state)
            except OSError as err:  # read-only or full disk: the FloatingPointError stays the error
                error = err
            if error is None:
                self._last_checkpoint = path
                raise FloatingPointError(f"{reason}; the state before this experience (finite) was saved to {path} "
                                         f"— {_fix(path)}")
            written = f"the state before this experience could not be written to {path} ({type(error).__name__}: {error})"
        else:
            written = "the state before this experience is not finite either (nothing written)"
        last = self._last_checkpoint
        where = (f"the last checkpoint with a finite state is {last} — {_fix(last)}" if last is not None else
                 "there is no finite state to resume from: restart — rebuild the strategy with the fix and train "
                 "from the first experience")
        raise FloatingPointError(f"{reason}; {written}; {where}") from error

    # ------------------------------------------------------------------ checkpoints
    def _our_plugins(self, strict: bool | None = None) -> dict[str, Any]:
        # plugins whose state a checkpoint keeps; unknown stateful ones refused outside train()
        out = checkpoint_plugins(self.plugins, strict=not self._in_train_call if strict is None else strict)
        for m in getattr(self.evaluator, "metrics", []):
            if hasattr(m, "state_dict") and hasattr(m, "load_state_dict"):
                out["metric:" + type(m).__name__] = m
        for lg in getattr(self.evaluator, "loggers", []):  # e.g. MLflowLogger: resume continues its run
            if hasattr(lg, "state_dict") and hasattr(lg, "load_state_dict"):
                key = "logger:" + type(lg).__name__
                n = sum(k.split("#")[0] == key for k in out)  # a second one of a type: "logger:X#1"
                out[key if n == 0 else f"{key}#{n}"] = lg
        return out

    @property
    def uncompiled_model(self) -> Any:
        """``self.model`` without a ``torch.compile`` wrapper: checkpoints hold its keys (no ``_orig_mod.``)
        and skip its frozen backbone, compiled or not."""
        return getattr(self.model, "_orig_mod", self.model)

    def state_dict_for_checkpoint(self) -> dict:
        """Everything needed to continue exactly: trainable state, plugin/metric state, RNG, position."""
        model = self.uncompiled_model
        model_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("vit.")}
        return {
            "strategy": type(self).__name__,
            "method": self.method_name,
            "config": self.cfg.to_dict(),
            "num_classes": self.num_classes,
            "seed": self.seed,
            "backbone": {**self.backbone_spec, "fingerprint": self.backbone_fingerprint},
            "model_structure": model.structure(),
            "model_state": model_state,
            "task_classes": [list(c) for c in self.task_classes],
            "trained_experiences": self.trained_experiences,
            "method_state": self.method_state_dict(),
            "plugins": {name: p.state_dict() for name, p in self._our_plugins().items()},
            "rng": capture_rng_state(),
            "generator": self.generator.get_state(),
            "task_labels": self.task_label_map.state_dict(),
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write an atomic, version-stamped checkpoint (loadable with ``weights_only=True``); under
        ``torch.distributed`` only rank 0 writes, the others wait for it. ``~`` is expanded.

        Raises:
            FloatingPointError: the state is not finite; nothing is written (an existing file stays).
        """
        if self._in_train_call:
            raise RuntimeError("save_checkpoint: call it between experiences, not inside train()")
        path = user_path(path)
        state = self.state_dict_for_checkpoint()
        bad = nonfinite_keys(state)
        if bad:
            raise FloatingPointError(
                f"save_checkpoint: the strategy's state is non-finite ({', '.join(bad[:5])}); not written ({path} is "
                f"left as it was) — resume_from the last good checkpoint with the fix, or restart")
        if is_main_process():  # under torch.distributed only rank 0 writes
            save_checkpoint_file(path, state)
        barrier()
        self._last_checkpoint = path
        if self.interrupted_experience is not None:
            log.warning("save_checkpoint(%s): experience %d was interrupted; the checkpoint holds the state before it, "
                        "and resume_from continues with experience %d", path, self.interrupted_experience,
                        self.interrupted_experience)
        return path

    def resume_from(self, path: str | Path, *, allow_seed_change: bool = False) -> int:
        """Restore a checkpoint; returns the index of the next experience to train.

        Everything is checked before any state changes: the file's digest, every key's presence and
        type, the strategy class, ``num_classes``, the backbone's fingerprint, the structural settings
        (the config's ``STRUCTURAL`` fields) and — on a copy of the model that shares the frozen
        backbone — that the trainable state fits. Non-structural settings (learning rates, epochs,
        optimizers, schedules...) may differ: they are logged as a warning and kept in
        :attr:`resume_overrides` as ``{field: (checkpoint value, current value)}``. The seed must match
        (it fixes the class order and the training randomness) unless ``allow_seed_change=True``, which
        records ``resume_overrides["seed"]``. ``~`` in ``path`` is expanded.

        Raises:
            CheckpointError: the file is corrupt, of an old format, or incomplete.
            ValueError: the checkpoint belongs to another strategy, ``num_classes``, seed, backbone or
                structural setting (listed), holds a non-finite state, or does not fit the model (this
                strategy trained past it: resume into a fresh strategy).
        """
        path = user_path(path)
        state = load_checkpoint_file(path)
        check_checkpoint_payload(state, path)
        if state["strategy"] != type(self).__name__:
            raise ValueError(
                f"checkpoint: {path} was written by {state['strategy']!r}, not {type(self).__name__}"
            )
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint: {path} was made with num_classes={state['num_classes']}, this strategy has "
                f"num_classes={self.num_classes}"
            )
        if state["trained_experiences"] < self.trained_experiences:
            raise ValueError(
                f"checkpoint: {path} holds {state['trained_experiences']} trained experience(s), but this strategy has "
                f"already trained {self.trained_experiences} experiences (its model grew past the checkpoint's): "
                f"resume into a fresh strategy built with the same settings")
        overrides = settings_overrides(state["config"], self.cfg, path)
        if state["seed"] != self.seed:
            if not allow_seed_change:
                raise ValueError(
                    f"checkpoint: {path} was made with seed={state['seed']}, this strategy has seed={self.seed}; the "
                    f"seed fixes the class order and the training randomness — build the strategy (and the benchmark) "
                    f"with seed={state['seed']}, or pass allow_seed_change=True to continue with seed={self.seed} "
                    f"(recorded in resume_overrides['seed'])")
            overrides["seed"] = (state["seed"], self.seed)
        if state["backbone"]["fingerprint"] != self.backbone_fingerprint:
            raise ValueError(f"checkpoint: {path} was trained on another backbone (weights differ)")
        bad = nonfinite_keys(state)
        if bad:
            raise ValueError(f"checkpoint: {path} holds a non-finite state ({', '.join(bad[:5])}); resume from an "
                             f"earlier checkpoint, or restart")
        self._check_model_state_fits(state, path)
        ours = self._our_plugins()

        # ---- nothing above mutated the strategy; restore
        self._restore_state(state, ours)
        self.resume_overrides = overrides
        self.interrupted_experience = None
        self._last_checkpoint = path
        if overrides:
            log.warning("resume_from(%s): settings differ from the checkpoint's, using the new ones: %s",
                        path, format_overrides(overrides))
        return self.trained_experiences

    def _restore_state(self, state: dict, ours: dict[str, Any], *, loggers: bool = True) -> None:
        """Set the strategy to a checked checkpoint payload (``loggers=False``: loggers keep their run)."""
        self.uncompiled_model.grow_to(state["model_structure"])
        self.uncompiled_model.load_state_dict(state["model_state"], strict=False)
        self.model.to(self.device)
        self.task_classes = [list(map(int, c)) for c in state["task_classes"]]
        self.class_to_task = {c: t for t, cs in enumerate(self.task_classes) for c in cs}
        self.trained_experiences = int(state["trained_experiences"])
        self.load_method_state_dict(state["method_state"])
        for name, pstate in state["plugins"].items():
            if not loggers and name.startswith("logger:"):
                continue
            if name in ours:
                ours[name].load_state_dict(pstate)
            else:
                log.warning("checkpoint: no plugin %s in this strategy; its state is ignored", name)
        restore_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.clock.train_exp_counter = self.trained_experiences
        if "task_labels" in state:
            self.task_label_map.load_state_dict(state["task_labels"])
        else:  # older checkpoints: task label t was task t
            self.task_label_map.load_state_dict({"label_to_task": {t: t for t in range(len(self.task_classes))}})

    def _check_model_state_fits(self, state: dict, path: str | Path) -> None:
        """Dry run of ``grow_to`` + ``load_state_dict`` on a copy sharing the frozen backbone."""
        hint = (f"; this strategy has trained {self.trained_experiences} experience(s): resume into a fresh strategy"
                if self.trained_experiences else "")
        try:
            trial = copy_sharing_backbone(self.uncompiled_model)
            trial.grow_to(state["model_structure"])
            missing, unexpected = trial.load_state_dict(state["model_state"], strict=False)
        except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"checkpoint: {path} does not fit the model ({type(err).__name__}: {err}){hint}") from err
        missing = [k for k in missing if not k.startswith("vit.")]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint: {path} does not fit the model (missing {missing}, unexpected {unexpected}){hint}")


def _fix(path: Any) -> str:
    return (f"fix the cause (learning rate, data; settings that do not shape the model may change) and call "
            f"resume_from({str(path)!r}) on a strategy built with the fixed settings")


def weights_fingerprint(module: nn.Module) -> str:
    """First 16 hex digits of the sha256 of ``module``'s state (names and bytes, sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
