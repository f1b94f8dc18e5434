"""What every method's model shares: a ``PrefixViT``, a linear head, structure for checkpoints and
optimizer parameter groups. Imports only torch and the torch-only layers."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..engine import PrefixViT

__all__ = ["PromptedClassifier"]


class PromptedClassifier(nn.Module):
    """Base for method models: ``vit`` (a :class:`PrefixViT`) + ``head`` (``Linear(D, num_classes)``).

    Subclasses put their prompt parameters anywhere but in ``head``/``tii``; :meth:`param_groups`
    gives them the prompt learning rate and the head ``lr * head_lr_scale``. Models whose parameter
    set grows per task override :meth:`structure` / :meth:`grow_to` so that a checkpoint can be
    loaded into a freshly built model.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, layers: tuple[int, ...] | list[int] | None) -> None:
        super().__init__()
        self.vit = backbone if isinstance(backbone, PrefixViT) else PrefixViT(backbone, layers)
        self.layers = self.vit.layers
        self.num_classes = num_classes
        self.head = nn.Linear(self.vit.num_features, num_classes)
        self.last_features: Tensor | None = None

    def plain_features(self, x: Tensor) -> Tensor:
        """Unprompted pooled features (the query pass), no grad."""
        return self.vit.features(x)

    def param_groups(self, cfg: Any) -> list[dict]:
        head = [p for n, p in self.named_parameters() if n.startswith("head.")]
        prompts = [
            p for n, p in self.named_parameters()
            if not n.startswith(("head.", "vit.", "tii.")) and p.requires_grad
        ]
        groups = [{"params": head, "lr": cfg.lr * cfg.head_lr_scale, "name": "head"}]
        if prompts:
            groups.insert(0, {"params": prompts, "lr": cfg.lr, "name": "prompts"})
        return groups

    def structure(self) -> dict:
        return {}

    def grow_to(self, structure: dict) -> None:
        return None
