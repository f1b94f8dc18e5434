"""Baseline strategies: ``HiDePromptStrategy``, ``LinearProbeStrategy``, ``SequentialPromptStrategy``
(the lower bound) and ``JointPromptStrategy`` (the upper bound)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from ...training.base_strategy import PromptStrategyBase
from ...training.hide import HiDePhases
from ...training.plugins import PhaseSchedulerPlugin
from .config import HiDeBaselineConfig, JointPromptConfig, LinearProbeConfig, SequentialPromptConfig
from .model import LinearProbeModel, SinglePrefixModel, TaskPrefixModel

__all__ = ["HiDePromptStrategy", "JointPromptStrategy", "LinearProbeStrategy", "SequentialPromptStrategy"]


class LinearProbeStrategy(PromptStrategyBase):
    """``linear``: frozen backbone, no prompts, a linear head trained on each experience in turn
    (CE masked to the experience's classes)."""

    config_cls = LinearProbeConfig
    method_name = "linear"

    def build_model(self, backbone: nn.Module) -> LinearProbeModel:
        return LinearProbeModel(backbone, self.num_classes)

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.model(x)


class SequentialPromptStrategy(PromptStrategyBase):
    """``seq``: one prefix prompt (SMoPE's layers and length) and the head, fine-tuned on each
    experience in turn with task-masked CE; no routing, no phases. The lower bound."""

    config_cls = SequentialPromptConfig
    method_name = "seq"

    def build_model(self, backbone: nn.Module) -> SinglePrefixModel:
        cfg = self.cfg
        return SinglePrefixModel(
            backbone, self.num_classes, layers=cfg.layers, length=cfg.length, prompt_init=cfg.prompt_init,
            generator=self.generator,
        )

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.model(x)


class JointPromptStrategy(SequentialPromptStrategy):
    """``joint``: the ``seq`` model trained at step t on the union of experiences 0..t, with CE over
    every class seen so far, so that ``A[t, i]`` exists; its last row is the upper bound.

    With ``restart=True`` (the default) each step starts again from the prompt and head drawn at
    construction, so step t is an independent joint-training run on experiences 0..t; with
    ``restart=False`` it continues from step t−1. The union is read from ``experience.origin_stream``
    (so a resumed run still sees the earlier experiences)."""

    config_cls = JointPromptConfig
    method_name = "joint"

    def build_model(self, backbone: nn.Module) -> SinglePrefixModel:
        model = super().build_model(backbone)
        # the initial trainable values (seeded, so a resumed run rebuilds the same ones)
        self._initial_trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return model

    def prepare_task(self, task_id: int) -> None:
        if self.cfg.restart:
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    if name in self._initial_trainable:
                        p.copy_(self._initial_trainable[name])

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        exp = self.experience
        stream = getattr(exp, "origin_stream", None)
        if stream is None:
            raise ValueError("joint: the experience has no origin_stream to take earlier experiences from")
        n = exp.current_experience + 1
        try:
            earlier = [stream[i] for i in range(n)]
        except TypeError:  # a lazy stream (CLStream) has no indexing; Avalanche memoises its generator
            earlier = list(itertools.islice(iter(stream), n))
        if len(earlier) < n:
            raise ValueError(
                f"joint: the stream gave {len(earlier)} of the {n} experiences up to this one (an iterator read "
                f"once?); build it from a list or a generator function so that earlier experiences can be re-read"
            )
        data = earlier[0].dataset
        for e in earlier[1:]:
            data = data.concat(e.dataset)
        self.adapted_dataset = data.train()

    def train_mask_classes(self) -> list[int]:
        return self.seen_classes


class HiDePromptStrategy(HiDePhases, PromptStrategyBase):
    """``hide``: HiDe-Prompt (Wang et al., NeurIPS 2023) — a prefix prompt per task (copied from the
    previous one, with prompt momentum), TII, WTP (task-masked CE + contrastive regulariser) and TAP;
    no routing."""

    config_cls = HiDeBaselineConfig
    method_name = "hide"

    def build_model(self, backbone: nn.Module) -> TaskPrefixModel:
        cfg = self.cfg
        self._init_hide()
        model = TaskPrefixModel(
            backbone, self.num_classes, layers=cfg.layers, length=cfg.length, prompt_init=cfg.prompt_init,
            prefix_layout=cfg.prefix_layout, generator=self.generator,
        )
        model.momentum = cfg.prompt_momentum
        return model

    def default_plugins(self) -> list[Any]:
        self.phase_scheduler = PhaseSchedulerPlugin(phases=self.cfg.phases)
        return [self.phase_scheduler]

    def prepare_task(self, task_id: int) -> None:
        self.model.prefix_chunk = self.rank_batch()
        self.model.add_task()

    def model_adaptation(self, model: nn.Module | None = None) -> nn.Module:
        """Also sets the official reshape's unit, one virtual rank (``rank_batch``), for evaluation."""
        model = super().model_adaptation(model)
        model.prefix_chunk = self.rank_batch()
        return model

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x, self.task_id)

    def aux_loss(self) -> Tensor | None:
        return self.contrastive_term(self.model.last_features)

    def finish_task(self, task_id: int) -> None:
        self.model.consolidate(task_id)
        self.model.prompts[task_id].requires_grad_(False)

    def task_features(self, x: Tensor, task_id: int) -> Tensor:
        return self.model.forward_features(x, task_id)


