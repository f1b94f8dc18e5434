"""Inference outside Avalanche's loop: ``predict`` / ``predict_logits`` and ``from_checkpoint``.

``PredictionMixin`` is a base of :class:`~.base_strategy.PromptStrategyBase`. Its methods score a
tensor of images exactly as ``strategy.eval`` does — the method's task identification (or the
stream's task labels under ``use_task_labels``), the model in eval mode, bf16 autocast on CUDA, the
logits masked to the classes seen so far (−1e4 elsewhere) — in batches of ``eval_mb_size``, with
no benchmark and the input on any device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..engine import mask_logits

__all__ = ["PredictionMixin"]


class PredictionMixin:
    """``predict_logits(x)``, ``predict(x)`` and ``from_checkpoint(path)`` for a prompt strategy."""

    @torch.no_grad()
    def predict_logits(self, x: Tensor, *, task_labels: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        """Logits ``(N, num_classes)`` (float32, on ``x``'s device) of images ``x`` ``(N, C, H, W)``,
        as evaluation scores them: classes not seen yet are −1e4.

        Args:
            x: a batch of images, already transformed as the test stream's (any device).
            task_labels: ``(N,)`` the stream's task labels; used only with ``use_task_labels=True``
                (mapped to tasks as evaluation maps them), ignored otherwise.
            batch_size: images per forward; default ``eval_mb_size``.
        """
        if not self.task_classes:
            raise RuntimeError(
                f"{type(self).__name__}.predict_logits: nothing trained yet; train it, resume_from(path) "
                f"or build it with {type(self).__name__}.from_checkpoint(path)"
            )
        if not isinstance(x, Tensor) or x.ndim != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected an image tensor (N, C, H, W), got {got}")
        if task_labels is not None and len(task_labels) != len(x):
            raise ValueError(f"task_labels: {len(task_labels)} labels for {len(x)} images")
        size = int(batch_size or self.eval_mb_size)
        if size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {size}")
        seen = self._class_mask(self.seen_classes)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for start in range(0, len(x), size):
                xb = x[start : start + size].to(self.device)
                labels = None if task_labels is None else torch.as_tensor(task_labels[start : start + size])
                with self._autocast():
                    logits = self._predict_with_task_labels(xb, None if labels is None else labels.to(self.device))
                out.append(mask_logits(logits.float(), seen).to(x.device))
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.num_classes, device=x.device)

    def predict(self, x: Tensor, *, task_labels: Tensor | None = None, batch_size: int | None = None) -> Tensor:
        """Predicted class ids ``(N,)`` (int64, on ``x``'s device): the argmax of :meth:`predict_logits`,
        always a class seen in training."""
        return self.predict_logits(x, task_labels=task_labels, batch_size=batch_size).argmax(-1)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Any:
        """A strategy rebuilt from a checkpoint written by ``save_checkpoint`` and restored into it:
        ready to ``predict`` (or to continue training).

        The checkpoint gives ``num_classes``, ``seed``, the method settings and — when it was built
        from a timm name — the backbone (name, ``pretrained``, ``checkpoint_path``, ``backbone_kwargs``).
        ``kwargs`` are constructor keywords that replace them or add to them (``device=``,
        ``loggers=[]``, ``progress=False``, or ``backbone=`` a model / ``checkpoint_path=`` a weight file
        when the original is not available here). The backbone must be the one trained on (its
        fingerprint is checked), as in :meth:`resume_from`.
        """
        from .checkpointing.checkpoint import load_checkpoint_file
        from .checkpointing.resume import check_checkpoint_payload
        from .config import replace_config

        state = load_checkpoint_file(path)
        check_checkpoint_payload(state, path)
        if state["strategy"] != cls.__name__:
            raise ValueError(f"checkpoint: {path} was written by {state['strategy']!r}, not {cls.__name__}; "
                             f"call {state['strategy']}.from_checkpoint")
        spec = state["backbone"]
        args: dict[str, Any] = {"num_classes": state["num_classes"], "seed": state["seed"]}
        if "backbone" not in kwargs and not _is_timm_name(spec["backbone"]):
            raise ValueError(
                f"checkpoint: {path} was trained on a backbone built in code ({spec['backbone']}); pass "
                f"backbone=<the same model> to from_checkpoint"
            )
        if isinstance(kwargs.get("backbone", spec["backbone"]), str):  # a timm name: its weights as trained
            args.update(backbone=spec["backbone"], pretrained=spec["pretrained"],
                        checkpoint_path=spec["checkpoint_path"], backbone_kwargs=spec["backbone_kwargs"])
        if "config" not in kwargs:
            args["config"] = replace_config(cls.config_cls(), state["config"])
        args.update(kwargs)
        strategy = cls(**args)
        strategy.resume_from(path)
        return strategy


def _is_timm_name(name: object) -> bool:
    """Whether ``name`` is a timm model name (with an optional ``.tag``), as opposed to a class name."""
    import timm

    return isinstance(name, str) and bool(timm.is_model(name.split(".")[0]))
