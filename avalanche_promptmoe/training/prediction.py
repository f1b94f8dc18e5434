"""Inference outside Avalanche's loop: ``predict`` / ``predict_logits`` and ``from_checkpoint``.

``PredictionMixin`` is a base of :class:`~.base_strategy.PromptStrategyBase`. Its methods score a
tensor of images exactly as ``strategy.eval`` does — the method's task identification (or the
stream's task labels under ``use_task_labels``), the model in eval mode, bf16 autocast on CUDA, the
logits masked to the classes seen so far (−1e4 elsewhere) — in batches of ``eval_mb_size``, with
no benchmark and the input on any device. They also take a dataset (or an experience): its
evaluation view is read in order, in batches, with its task labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..engine import mask_logits

__all__ = ["PredictionMixin"]


class PredictionMixin:
    """``predict_logits(x)``, ``predict(x)`` and ``from_checkpoint(path)`` for a prompt strategy."""

    @torch.no_grad()
    def predict_logits(
        self, x: Tensor | Dataset | Any, *, task_labels: Tensor | None = None, batch_size: int | None = None
    ) -> Tensor:
        """Logits ``(N, num_classes)`` (float32) of ``N`` images, as evaluation scores them: classes
        not seen yet are −1e4.

        Args:
            x: a batch of images ``(N, C, H, W)``, already transformed as the test stream's (any
                device; the logits come back on it); or a dataset whose items are ``(image, ...)``
                (an Avalanche dataset gives ``(x, y, t)``), or an experience (its ``dataset``): read
                in order through its ``eval()`` view when it has one (the test transforms, as
                ``strategy.eval`` reads it), its third field taken as the task labels; the logits
                come back on the CPU.
            task_labels: ``(N,)`` the stream's task labels; used only with ``use_task_labels=True``
                (mapped to tasks as evaluation maps them), ignored otherwise. Not with a dataset.
            batch_size: images per forward; default ``eval_mb_size``.
        """
        if not self.task_classes:
            raise RuntimeError(
                f"{type(self).__name__}.predict_logits: nothing trained yet; train it, resume_from(path) "
                f"or build it with {type(self).__name__}.from_checkpoint(path)"
            )
        size = int(batch_size or self.eval_mb_size)
        if size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {size}")
        if not isinstance(x, Tensor):
            if task_labels is not None:
                raise ValueError("task_labels: a dataset brings its own task labels; pass task_labels only with a tensor")
            return self._predict_dataset_logits(x, size)
        if x.ndim != 4:
            raise ValueError(f"x: expected an image tensor (N, C, H, W), a dataset or an experience, got {tuple(x.shape)}")
        if task_labels is not None and len(task_labels) != len(x):
            raise ValueError(f"task_labels: {len(task_labels)} labels for {len(x)} images")
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

    def predict(
        self, x: Tensor | Dataset | Any, *, task_labels: Tensor | None = None, batch_size: int | None = None
    ) -> Tensor:
        """Predicted class ids ``(N,)`` (int64; on ``x``'s device, on the CPU for a dataset): the
        argmax of :meth:`predict_logits` (same arguments), always a class seen in training."""
        return self.predict_logits(x, task_labels=task_labels, batch_size=batch_size).argmax(-1)

    def _predict_dataset_logits(self, data: Any, size: int) -> Tensor:
        """:meth:`predict_logits` over a dataset or an experience, in order, ``size`` images a batch."""
        if not _is_dataset(data) and _is_dataset(getattr(data, "dataset", None)):
            data = data.dataset  # an experience
        if not _is_dataset(data):
            raise ValueError(f"x: expected an image tensor (N, C, H, W), a dataset or an experience, "
                             f"got {type(data).__name__}")
        if callable(getattr(data, "eval", None)):
            data = data.eval()  # Avalanche: the evaluation transforms, as strategy.eval reads it
        out = []
        for batch in DataLoader(data, batch_size=size, shuffle=False):
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            labels = batch[2] if isinstance(batch, (list, tuple)) and len(batch) >= 3 else None
            if not isinstance(images, Tensor) or images.ndim != 4:
                got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
                raise ValueError(f"x: the dataset's first field must batch to image tensors (N, C, H, W) "
                                 f"(give it a ToTensor transform), got {got}")
            out.append(self.predict_logits(images.cpu(), task_labels=labels, batch_size=size))
        return torch.cat(out) if out else torch.empty(0, self.num_classes)

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


def _is_dataset(obj: object) -> bool:
    """Whether ``obj`` is a map-style dataset: a torch ``Dataset``, or (Avalanche's datasets are not
    ``Dataset`` subclasses) any sized, indexable object other than a string or a mapping."""
    if isinstance(obj, Dataset):
        return True
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (str, bytes, Mapping))


def _is_timm_name(name: object) -> bool:
    """Whether ``name`` is a timm model name (with an optional ``.tag``), as opposed to a class name."""
    import timm

    return isinstance(name, str) and bool(timm.is_model(name.split(".")[0]))
