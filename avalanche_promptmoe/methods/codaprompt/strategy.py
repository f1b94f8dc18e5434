"""``CODAPromptStrategy``: CODA-Prompt as an Avalanche strategy."""

from __future__ import annotations

from torch import nn

from ..query_match_strategy import QueryMatchStrategy
from .config import CODAPromptConfig
from .model import CODAPromptModel

__all__ = ["CODAPromptStrategy"]


class CODAPromptStrategy(QueryMatchStrategy):
    """CODA-Prompt (Smith et al., CVPR 2023) on a frozen timm ViT: query pass → per-sample cosine
    weights of every component so far → weighted prompt as prefix → head. Each experience adds
    ``components_per_task`` components per layer (Gram–Schmidt from the strategy's seeded generator)
    and freezes the earlier ones. Loss: task-masked CE + ``ortho_mu`` · orthogonality term.

    Keywords: those of :class:`PromptStrategyBase` and every field of :class:`CODAPromptConfig`.
    ``expert_usage()`` is ``None``: CODA-P selects nothing — every component is used by every sample
    with a real-valued (possibly negative) weight, so there are no selection counts.
    """

    config_cls = CODAPromptConfig
    method_name = "codaprompt"

    def build_model(self, backbone: nn.Module) -> CODAPromptModel:
        cfg = self.cfg
        return CODAPromptModel(
            backbone, self.num_classes, layers=cfg.layers, components_per_task=cfg.components_per_task,
            length=cfg.length, ortho_mu=cfg.ortho_mu, generator=self.generator,
        )

    def prepare_task(self, task_id: int) -> None:
        while self.model.num_tasks <= task_id:
            self.model.add_task()
