"""``LayerGroupedPromptStrategy``: HLGP as an Avalanche strategy."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ...training.base_strategy import PromptStrategyBase
from ...training.hide import HiDePhases
from ...training.plugins import PhaseSchedulerPlugin
from .config import HLGPConfig
from .model import LayerGroupedPromptModel

__all__ = ["LayerGroupedPromptStrategy"]


class LayerGroupedPromptStrategy(HiDePhases, PromptStrategyBase):
    """Hierarchical Layer-Grouped Prompt tuning (Jiang et al., arXiv 2511.12090) on a frozen timm ViT.

    Per task: a new root prompt, group adapters and PIEs, copied from the previous task (task 0:
    Gaussian root); earlier tasks are frozen. WTP trains them and the head with task-masked CE on the
    task's own prompts; after it, the class means of the task's unprompted features are stored for
    Soft Task Matching and (optionally) TAP realigns the head on class Gaussians of prompted features.
    Inference: query pass → SoTM weights over tasks → fused prompts → prompted pass → head (two
    backbone passes; one with a single task or with ``use_task_labels``).

    Keywords: those of :class:`PromptStrategyBase` and every field of :class:`HLGPConfig`.
    """

    config_cls = HLGPConfig
    method_name = "hlgp"

    def build_model(self, backbone: nn.Module) -> LayerGroupedPromptModel:
        cfg = self.cfg
        self._init_hide()
        return LayerGroupedPromptModel(
            backbone, self.num_classes, layers=cfg.layers, groups=cfg.groups, length=cfg.length, rank=cfg.rank,
            share_kv_adapter=cfg.share_kv_adapter, pie=cfg.pie, root_std=cfg.root_std, matching=cfg.matching,
            tau=cfg.match_tau, generator=self.generator,
        )

    def default_plugins(self) -> list[Any]:
        self.phase_scheduler = PhaseSchedulerPlugin(phases=self.cfg.phases)
        return [self.phase_scheduler]

    def expert_usage(self) -> None:
        """Always ``None``: HLGP has no sparse expert routing to count. Every input uses every group
        adapter of the fused prompt; the only selection is Soft Task Matching, a soft weighting over
        *tasks* (not experts), recomputed per input at inference and not accumulated."""
        return None

    def prepare_task(self, task_id: int) -> None:
        self.model.add_task()

    def finish_task(self, task_id: int) -> None:
        feats, labels = self.query_features()
        self.model.store_class_means(feats, labels, task_id)

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x, self.task_id)

    def aux_loss(self) -> Tensor | None:
        return self.contrastive_term(self.model.last_features)

    def task_features(self, x: Tensor, task_id: int) -> Tensor:
        return self.model.forward_features(x, task_id)

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        if task_ids is not None:  # oracle task id: that task's prompt, no query pass
            return self.model(x, task_ids.long())
        return self.model(x)

