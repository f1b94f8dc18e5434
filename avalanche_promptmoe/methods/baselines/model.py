"""Baseline models on the shared engine (torch only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...engine import TaskIdentityHead, check_task_ids
from ...prompts import PrefixLayout, arrange_prefix, init_prompt_, prefix_lengths
from ..model_base import PromptedClassifier

__all__ = ["LinearProbeModel", "SinglePrefixModel", "TaskPrefixModel"]


class LinearProbeModel(PromptedClassifier):
    """Frozen features → linear head (no prompts; the backbone runs without grad)."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_classes, layers=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.plain_features(x))


class SinglePrefixModel(PromptedClassifier):
    """One prefix prompt shared by every sample: per layer keys/values ``(H, L, Dh)``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0, 1, 2, 3, 4, 5),
        length: int = 50,
        convention: str = "split",
        prompt_init: str = "uniform01",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, tuple(layers))
        n_tok, _ = prefix_lengths(length, convention)
        shape = (len(self.layers), 2, self.vit.num_heads, n_tok, self.vit.head_dim)
        self.prompt = nn.Parameter(init_prompt_(torch.empty(shape), prompt_init, generator))

    def forward_features(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        prefix = {
            layer: (p[0].unsqueeze(0).expand(B, -1, -1, -1), p[1].unsqueeze(0).expand(B, -1, -1, -1))
            for layer, p in zip(self.layers, self.prompt)
        }
        self.last_features = self.vit(x, prefix)
        return self.last_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


class TaskPrefixModel(PromptedClassifier):
    """HiDe-Prompt's model: one prefix prompt per task ``(layers, 2, H, L, Dh)``, chosen by task id
    (ground truth in training, TII at inference), a head and the TII head.

    ``prefix_layout``: ``"kv"`` (each sample attends to its own prompt's keys and values) or
    ``"hide_official"`` (the official code's batch reshape; prompts/layouts.py), used by every
    prompted forward (training, class statistics, evaluation); ``prefix_chunk``: the reshape acts
    on runs of that many samples (the official per-GPU batch; ``None``: the whole batch).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0, 1, 2, 3, 4),
        length: int = 5,
        prompt_init: str = "uniform_pm1",
        prefix_layout: PrefixLayout = "kv",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, tuple(layers))
        self.length, self.prompt_init, self._generator = length, prompt_init, generator
        self.prefix_layout = prefix_layout
        self.prefix_chunk: int | None = None
        self.prompts = nn.ParameterList()
        self.tii = TaskIdentityHead(self.vit.num_features, num_classes)
        self.momentum = 0.0

    @property
    def num_tasks(self) -> int:
        return len(self.prompts)

    def add_task(self) -> int:
        """New task prompt: a copy of the previous one (HiDe's shared prompt pool), else fresh."""
        shape = (len(self.layers), 2, self.vit.num_heads, self.length, self.vit.head_dim)
        if self.prompts:
            p = self.prompts[-1].detach().clone()
            for old in self.prompts:
                old.requires_grad_(False)
        else:
            p = init_prompt_(torch.empty(shape), self.prompt_init, self._generator)
        device = self.head.weight.device
        self.prompts.append(nn.Parameter(p.to(device)))
        return self.num_tasks - 1

    def structure(self) -> dict:
        return {"num_tasks": self.num_tasks}

    def grow_to(self, structure: dict) -> None:
        while self.num_tasks < int(structure["num_tasks"]):
            self.add_task()

    def task_prompt(self, task: int) -> Tensor:
        """The prompt task ``task`` trains with: with momentum m > 0 and earlier tasks,
        ``(1 − m)·P_t + m·mean(P_<t)`` (earlier prompts detached)."""
        p = self.prompts[task]
        if self.momentum and task > 0 and p.requires_grad:
            old = torch.stack([q.detach() for q in self.prompts[:task]]).mean(0)
            p = (1 - self.momentum) * p + self.momentum * old
        return p

    @torch.no_grad()
    def consolidate(self, task: int) -> None:
        """After task ``task``: keep the momentum mix as its prompt."""
        self.prompts[task].copy_(self.task_prompt(task))

    def forward_features(self, x: Tensor, task_ids: Tensor | int) -> Tensor:
        check_task_ids(task_ids, self.num_tasks, type(self).__name__)
        B = x.shape[0]
        if isinstance(task_ids, int):
            p = self.task_prompt(task_ids).unsqueeze(0).expand(B, *([-1] * 5))
        else:  # (B,) → per-sample prompts by indexing the stacked task prompts
            p = torch.stack(list(self.prompts))[task_ids.long()]
        p = arrange_prefix(p, self.prefix_layout, self.prefix_chunk)  # (B, layers, 2, H, L, Dh)
        prefix = {layer: (p[:, i, 0], p[:, i, 1]) for i, layer in enumerate(self.layers)}
        self.last_features = self.vit(x, prefix)
        return self.last_features

    def forward(self, x: Tensor, task_ids: Tensor | int | None = None) -> Tensor:
        return self.head(self.forward_features(x, self.num_tasks - 1 if task_ids is None else task_ids))
