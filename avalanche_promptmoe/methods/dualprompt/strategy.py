"""``DualPromptStrategy``: DualPrompt as an Avalanche strategy."""

from __future__ import annotations

from torch import Tensor, nn

from ..query_match_strategy import QueryMatchStrategy
from .config import DualPromptConfig
from .model import DualPromptModel

__all__ = ["DualPromptStrategy"]


class DualPromptStrategy(QueryMatchStrategy):
    """DualPrompt (Wang et al., ECCV 2022) as in the CODA-Prompt code base, on a frozen timm ViT.

    Training: the current task's E-prompt in every E-layer, the G-prompts, task-masked CE + the pull
    term of the task's keys. Inference: query pass → each E-layer picks its top-1 key over the whole
    pool → prompted pass → head (with ``use_task_labels``, the oracle task's E-prompt instead).

    Keywords: those of :class:`PromptStrategyBase` and every field of :class:`DualPromptConfig`.
    ``expert_usage()``: E-prompt selections of the training forwards, ``(layers, 1, pool_size)`` with
    a row per prompted block (G-prompt rows stay 0); in training the selection is the task id.
    """

    config_cls = DualPromptConfig
    method_name = "dualprompt"

    def build_model(self, backbone: nn.Module) -> DualPromptModel:
        cfg = self.cfg
        model = DualPromptModel(
            backbone, self.num_classes, g_layers=cfg.g_layers, g_length=cfg.g_length, e_layers=cfg.e_layers,
            pool_size=cfg.pool_size, e_length=cfg.e_length, pull_reduction=cfg.pull_reduction,
            prompt_init=cfg.prompt_init, generator=self.generator,
        )
        self.usage_shape = (len(model.layers), cfg.pool_size)
        return model

    def prepare_task(self, task_id: int) -> None:
        self.model.check_task(task_id)

    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x, self.task_id)

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.model(x, task_ids)
