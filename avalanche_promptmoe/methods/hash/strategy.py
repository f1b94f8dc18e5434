"""``HashPromptStrategy``: Hash as an Avalanche strategy."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ...routing import ExpertUsage
from ...training.base_strategy import PromptStrategyBase
from ...training.hide import HiDePhases
from ...training.plugins import GradientScalingPlugin, PhaseSchedulerPlugin, RoutingHistoryPlugin
from .config import HashConfig
from .model import HashPromptModel
from .probe import ModulatorProbePlugin

__all__ = ["HashPromptStrategy"]


class HashPromptStrategy(HiDePhases, PromptStrategyBase):
    """History-Aware prompt-SHaring (Li et al., CVPR 2026) on a frozen timm ViT.

    Per task: TII (task-id head on unprompted features + Gaussian replay), WTP (shared pool routed by
    the task's router, history penalty δ on the frequent experts, their updates scaled by α (HGM),
    task-masked CE + HiDe's contrastive regulariser), TAP (head realignment from class Gaussians).
    Inference: query pass → TII task id → that task's router → prompted pass → head.

    Keywords: those of :class:`PromptStrategyBase` and every field of :class:`HashConfig`.
    """

    config_cls = HashConfig
    method_name = "hash"

    def build_model(self, backbone: nn.Module) -> HashPromptModel:
        cfg = self.cfg
        self._init_hide()
        return HashPromptModel(
            backbone, self.num_classes, layers=cfg.layers, num_experts=cfg.num_experts, length=cfg.length,
            top_k=cfg.top_k, delta=cfg.delta, score_reading=cfg.score_reading, router_init=cfg.router_init,
            prompt_init=cfg.prompt_init, generator=self.generator,
        )

    def default_plugins(self) -> list[Any]:
        cfg = self.cfg
        usage = ExpertUsage(len(cfg.layers), 1, cfg.num_experts, rule="top_k", k=cfg.top_k)
        self.routing_history = RoutingHistoryPlugin(usage=usage)
        self.phase_scheduler = PhaseSchedulerPlugin(phases=cfg.phases)
        self.modulator_probe = ModulatorProbePlugin()
        return [self.phase_scheduler, self.routing_history, GradientScalingPlugin(alpha=cfg.alpha, mode=cfg.hgm),
                self.modulator_probe]

    def diagnostics(self) -> dict[str, Any]:
        """``{"hash_modulator": [one record per experience]}``: the modulator's score spread, frequent-set
        selection shares and drift per prompted layer (:class:`ModulatorProbePlugin`); the runner writes
        it to ``summary.json``."""
        return {"hash_modulator": [dict(r) for r in self.modulator_probe.records]}

    def expert_usage(self) -> Tensor:
        """Hash's cumulative top-K selections ``(layers, 1, num_experts)`` (int64; one router shared by
        the heads), committed at the end of each experience: the routing history behind the HDR
        penalty and HGM. Same tensor as ``routing_history.usage.counts`` (a copy)."""
        return self.routing_history.usage.counts.clone()

    def prepare_task(self, task_id: int) -> None:
        self.model.add_task(frequent=self.routing_history.usage.frequent()[:, 0])

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x, self.task_id)

    def aux_loss(self) -> Tensor | None:
        return self.contrastive_term(self.model.last_features)

    def task_features(self, x: Tensor, task_id: int) -> Tensor:
        return self.model.forward_features(x, task_id)


