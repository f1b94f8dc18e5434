"""HLGP's prompted model: layer-grouped hierarchical prompts (one root per task, group adapters, PIE),
Soft Task Matching (SoTM) at inference, and a linear head. Imports only torch and the torch-only layers.

Shapes: B batch, C classes, T tasks, D feature width, Y prompted layers, L tokens, H heads, Dh head dim.

Soft Task Matching (our reading of SoTM; the paper gives no formula), from the unprompted query
features f(x) and the class means μ_c of the unprompted training features stored after each task:

    m_t(x) = max_{c ∈ task t} cos(f(x), μ_c)                         (B, T)
    w(x)   = softmax_t(m_t(x) / τ)        ("soft";  "hard": one-hot at argmax_t m_t)
    P_l(x) = Σ_t w_t(x) P_l^t                                        (B, H, L, Dh) per layer

Training uses the ground-truth task's prompt (one-hot), so the head and prompts of task t see only
P^t; with one task (or an oracle task id) there is no query pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engine import MASK_VALUE, check_task_ids
from ...prompts.layer_grouped import LayerGroupedPromptGenerator, PIEMode
from ..model_base import PromptedClassifier

__all__ = ["LayerGroupedPromptModel", "task_match_weights"]

MATCHING = ("soft", "hard")


def task_match_weights(
    features: Tensor, class_means: Tensor, class_task: Tensor, num_tasks: int, *, tau: float, matching: str = "soft"
) -> Tensor:
    """Soft Task Matching weights ``(B, T)``; rows sum to 1.

    Args:
        features: unprompted query features ``(B, D)``.
        class_means: ``(C, D)`` class means of unprompted features (rows of unseen classes ignored).
        class_task: ``(C,)`` long, the task of each class, −1 for classes not seen yet.
        num_tasks: T. A task with no stored class gets score −1e4 (never −inf; DECISIONS.md §C2).
        tau: softmax temperature τ on the cosine scores.
        matching: ``"soft"`` (softmax) or ``"hard"`` (one-hot at the argmax; ties → lower task).
    """
    if matching not in MATCHING:
        raise ValueError(f"matching: expected one of {MATCHING}, got {matching!r}")
    with torch.autocast(features.device.type, enabled=False):  # cosines in fp32, also under bf16 autocast
        sims = F.normalize(features.float(), dim=-1) @ F.normalize(class_means.float(), dim=-1).T  # (B, C)
    member = class_task.unsqueeze(0) == torch.arange(num_tasks, device=class_task.device).unsqueeze(1)  # (T, C)
    scores = sims.unsqueeze(1).masked_fill(~member, MASK_VALUE).amax(-1)  # (B, T)
    if matching == "hard":
        return F.one_hot(scores.argmax(-1), num_tasks).to(scores.dtype)
    return torch.softmax(scores / tau, dim=-1)


class LayerGroupedPromptModel(PromptedClassifier):
    """Frozen ViT + :class:`LayerGroupedPromptGenerator` + SoTM statistics + linear head.

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in a PrefixViT).
        num_classes: head outputs.
        layers: prompted blocks (default 0–5); groups: their partition into layer groups.
        length: L = 10 prompt tokens (keys and values each) per layer.
        rank, share_kv_adapter, pie, root_std: see :class:`LayerGroupedPromptGenerator`.
        matching: ``"soft"`` (SoTM) or ``"hard"`` (argmax task; ablation); tau: SoTM temperature τ.
        generator: RNG for the first task's initialisation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0, 1, 2, 3, 4, 5),
        groups: Sequence[Sequence[int]] = ((0, 1), (2, 3), (4, 5)),
        length: int = 10,
        rank: int = 32,
        share_kv_adapter: bool = True,
        pie: PIEMode = "per_task",
        root_std: float = 0.02,
        matching: str = "soft",
        tau: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, layers)
        if matching not in MATCHING:
            raise ValueError(f"matching: expected one of {MATCHING}, got {matching!r}")
        if tau <= 0:
            raise ValueError(f"tau: must be > 0, got {tau}")
        self.matching, self.tau = matching, float(tau)
        self.prompts = LayerGroupedPromptGenerator(
            self.layers, groups, length, self.vit.num_heads, self.vit.head_dim, rank=rank,
            share_kv_adapter=share_kv_adapter, pie=pie, root_std=root_std, generator=generator,
        )
        # SoTM statistics: class means of unprompted training features and each class's task
        self.register_buffer("class_means", torch.zeros(num_classes, self.vit.num_features))
        self.register_buffer("class_task", torch.full((num_classes,), -1, dtype=torch.long))
        self.last_task_weights: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.prompts.num_tasks

    def add_task(self) -> int:
        """Create the next task's prompts (a copy of the previous task's); earlier tasks freeze."""
        return self.prompts.add_task()

    def structure(self) -> dict:
        return {"num_tasks": self.num_tasks}

    def grow_to(self, structure: dict) -> None:
        while self.num_tasks < int(structure["num_tasks"]):
            self.add_task()

    @torch.no_grad()
    def store_class_means(self, features: Tensor, labels: Tensor, task: int) -> None:
        """Store the mean unprompted feature of each class in ``labels`` ``(N,)`` as belonging to ``task``."""
        features = features.to(self.class_means.device, torch.float32)
        labels = labels.to(self.class_means.device)
        for c in labels.unique().tolist():
            self.class_means[c] = features[labels == c].mean(0)
            self.class_task[c] = task

    def task_weights(self, x: Tensor) -> Tensor:
        """The query pass (unprompted features, no grad) and SoTM weights ``(B, T)``."""
        with torch.no_grad():
            feats = self.plain_features(x)
            return task_match_weights(
                feats, self.class_means, self.class_task, self.num_tasks, tau=self.tau, matching=self.matching
            )

    def forward_features(self, x: Tensor, task: int | Tensor | None = None) -> Tensor:
        """Prompted pre-logit features ``(B, D)``.

        Args:
            task: an ``int`` (that task's prompt for every sample), task ids ``(B,)``, task weights
                ``(B, T)``, or ``None``: SoTM weights from the query pass (no pass with one task).
        """
        if not self.num_tasks:
            raise RuntimeError("LayerGroupedPromptModel: no task yet; call add_task() first")
        if task is None:
            if self.num_tasks == 1:
                task = 0
            else:
                task = self.task_weights(x)
                self.last_task_weights = task
        else:
            check_task_ids(task, self.num_tasks, type(self).__name__)
        feats = self.vit(x, self.prompts.prefix(task))
        self.last_features = feats
        return feats

    def forward(self, x: Tensor, task: int | Tensor | None = None) -> Tensor:
        """Logits ``(B, num_classes)``; ``task`` as in :meth:`forward_features`."""
        return self.head(self.forward_features(x, task))
