"""SMoPE's settings (METHODS.md §2.2, CIFAR-100 column of the released scripts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...prompts.pool import InitName
from ...routing import check_top_k
from ...training.config import LRSchedule, OptimizerName
from ...training.hide import HiDeConfig, Phase, TapOptimizer, TapSchedule

__all__ = ["SMoPEConfig"]


@dataclass(frozen=True)
class SMoPEConfig(HiDeConfig):
    """SMoPE = one shared prefix of single-token prompt experts per prompted layer and head, sparse
    top-K selection on prompt-attention proxy scores, adaptive noise, router and prototype losses,
    a dense warm-up on the first task and HiDe's TAP (no TII: one forward pass at inference).

    Defaults are the CIFAR-100 values (SMoPE-repo ``experiments/cifar-100.sh``): head lr 0.005 and
    prompt lr ×5, so ``lr`` (the prompt lr) = 0.025 and ``head_lr_scale`` = 0.2. TAP as
    ``trainer.py: train_task_adaptive_prediction``: AdamW at ``ca_lr / 10`` = 1e-5, weight decay
    ``ca_weight_decay`` 5e-4, per-iteration cosine to 1e-6 (``CosineSchedulerIter``), batch and
    samples per class ``int(batch_size × ca_batch_size_ratio)`` (``tap_batch_ratio``: CIFAR / CUB 1,
    ImageNet-R 6), one iteration per previous-task class.

    Attributes:
        layers: prompted blocks (``e_layers = [0..5]``).
        num_experts: N_p = 25 experts per head and layer ("prompt length 50", split convention:
            one key and one value token per expert).
        top_k: K = 5 experts per sample, head and layer.
        epsilon: ε of the adaptive noise in training and of the router loss's margin (CIFAR 0.4,
            ImageNet-R 0.5, CUB 0.4).
        inference_epsilon: ε applied at inference to experts never selected in a past task (2.0).
        router_weight: α_router (CIFAR 1e-5, ImageNet-R 5e-5, CUB 1e-5).
        proto_weight: α_proto (CIFAR 1e-5, ImageNet-R 1e-4, CUB 5e-5).
        dense_warmup_fraction: the first task first trains densely for ``int(epochs · fraction)``
            epochs, then resets the optimizer and trains sparsely for ``epochs`` (0: no warm-up).
        prompt_init: pool initialisation, U(0, 1) (``nn.init.uniform_``).
        recipe: ``"official"`` makes the run behave as the official code (SMoPE @27b982c5, measured
            against its recorded outputs, tests/test_conformance_smope.py): the count pass excludes
            zero-count experts *live* (the set shrinks batch by batch), on the shuffled training
            loader (training transform, ``train_mb_size``, ``drop_last``); the ``cosine_iter``
            schedules run one iteration late (iteration 0 at the group's lr) over
            ``lr_iter_step × epochs`` iterations; the training loader drops its last partial batch;
            TAP statistics on the training transform; fp32 (no bf16 autocast). docs/methods.md "SMoPE".
        lr_iter_step: official recipe only: the iterations per epoch the per-iteration cosine spans
            (the yaml's ``iter_step``: CIFAR 40, while 5,000 / 128 with ``drop_last`` gives 39);
            ``None``: the loader's real count.
        tap_first_lr: official recipe only: the TAP's first iteration runs at the AdamW group's lr
            ``ca_lr`` = 1e-4 before the cosine from ``tap_lr`` = ``ca_lr / 10`` takes over
            (``None``: at ``tap_lr``).
    """

    epochs: int = 20
    lr: float = 0.025
    head_lr_scale: float = 0.2
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0
    lr_schedule: LRSchedule = "cosine"
    clip_grad: float | None = None
    phases: tuple[Phase, ...] = ("wtp", "tap")
    tap_epochs: int = 50
    tap_lr: float = 1e-5
    tap_optimizer: TapOptimizer = "adamw"
    tap_lr_schedule: TapSchedule = "cosine_iter"
    tap_lr_min: float = 1e-6
    tap_batch_ratio: float = 1.0
    replay_weight_decay: float = 5e-4
    tap_centroids: int = 1
    samples_per_class: int = 128
    contrastive_weight: float = 0.0
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    num_experts: int = 25
    top_k: int = 5
    epsilon: float = 0.4
    inference_epsilon: float = 2.0
    router_weight: float = 1e-5
    proto_weight: float = 1e-5
    dense_warmup_fraction: float = 0.5
    prompt_init: InitName = "uniform01"
    lr_iter_step: int | None = None
    tap_first_lr: float | None = None

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"layers", "num_experts", "top_k"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"num_experts", "top_k"})
    HAS_OFFICIAL_RECIPE: ClassVar[bool] = True  # Minhchuyentoancbn/SMoPE

    def __post_init__(self) -> None:
        super().__post_init__()
        check_top_k(self.top_k, self.num_experts)
        if "tii" in self.phases:
            raise ValueError(
                f"phases: SMoPE has no task-identity phase (one pass at inference), got {self.phases}"
            )
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon: the adaptive noise scale must be in [0, 1], got {self.epsilon}")
        if self.inference_epsilon < 0:
            raise ValueError(f"inference_epsilon: must be >= 0, got {self.inference_epsilon}")
        if self.router_weight < 0 or self.proto_weight < 0:
            raise ValueError(
                f"router_weight, proto_weight: must be >= 0, got {self.router_weight}, {self.proto_weight}"
            )
        if self.dense_warmup_fraction < 0:
            raise ValueError(f"dense_warmup_fraction: must be >= 0, got {self.dense_warmup_fraction}")
        if not self.layers:
            raise ValueError("layers: give at least one prompted block")
        for name in ("lr_iter_step", "tap_first_lr"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.recipe != "official":
                raise ValueError(f"{name}: only the official recipe uses it; set recipe='official' or drop it")
            if value <= 0:
                raise ValueError(f"{name}: must be > 0 or None, got {value}")
        if self.lr_iter_step is not None and self.lr_schedule != "cosine_iter":
            raise ValueError(f"lr_iter_step: only the 'cosine_iter' schedule uses it, got lr_schedule={self.lr_schedule!r}")
