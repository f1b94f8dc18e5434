"""``L2PStrategy``: L2P(++) as an Avalanche strategy."""

from __future__ import annotations

from torch import nn

from ..query_match_strategy import QueryMatchStrategy
from .config import L2PConfig
from .model import L2PModel

__all__ = ["L2PStrategy"]


class L2PStrategy(QueryMatchStrategy):
    """Learning to Prompt (Wang et al., CVPR 2022) as "L2P++" in the CODA-Prompt code base, on a
    frozen timm ViT: query pass → per-sample top-k of a key-matched prompt pool → prefix-tuned pass →
    head. Loss: task-masked CE + the pull term (``recipe``: per-sample mean or the official
    batch-summed cross term). One forward rule in training and inference.

    Keywords: those of :class:`PromptStrategyBase` and every field of :class:`L2PConfig`.
    ``expert_usage()``: how often each pool entry was selected in training, ``(layers, 1, pool_size)``.
    """

    config_cls = L2PConfig
    method_name = "l2p"

    def build_model(self, backbone: nn.Module) -> L2PModel:
        cfg = self.cfg
        self.usage_shape = (len(cfg.layers), cfg.pool_size)
        return L2PModel(
            backbone, self.num_classes, layers=cfg.layers, pool_size=cfg.pool_size, length=cfg.length,
            top_k=cfg.top_k, pull_reduction=cfg.pull_reduction, prompt_init=cfg.prompt_init,
            generator=self.generator,
        )
