"""HiDe-Prompt's phases for strategies (METHODS.md §3): TII before, TAP after each task's WTP.

:class:`HiDeConfig` holds the phase settings; :class:`HiDePhases` is a strategy mixin that runs
them on cached features with the plain functions of :mod:`training.phases`. The mixin needs a model
with ``plain_features(x)``, ``tii`` (a ``TaskIdentityHead``) and ``head``, and a strategy method
``task_features(x, task_id)`` giving prompted features with the task's own prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..engine import mask_logits
from .config import MethodConfig
from .features import extract_features
from .phases import ClassGaussians, contrastive_regulariser, train_head_on_features, train_head_on_gaussians

__all__ = ["HiDeConfig", "HiDePhases"]


@dataclass(frozen=True)
class HiDeConfig(MethodConfig):
    """HiDe-Prompt's phase settings (CIFAR-100 Sup-21K scripts, batch 128: lrs scaled by 128/256).

    Attributes:
        phases: which of ``("tii", "wtp", "tap")`` run.
        tii_epochs / tii_lr: TII head on the task's unprompted features (Adam, 0.0005·128/256).
        tii_replay_epochs / tii_replay_lr: TII head re-trained on Gaussian replay of all seen classes
            (SGD, ``crct_epochs`` = 30, ``ca_lr`` 0.005·128/256).
        tap_epochs / tap_lr / tap_optimizer: head realignment on Gaussian samples (SGD 0.005, 30 ep.).
        n_centroids: KMeans centroids per class for the TII statistics (10).
        tap_centroids: centroids per class for the TAP statistics (HiDe 10; SMoPE 1).
        samples_per_class: Gaussian samples per class per replay epoch (HiDe ≈ batch × centroids).
        contrastive_weight / tau: WTP's contrastive regulariser (reg 0.1 CIFAR, 0.01 CUB, 0.5 IN-R).
    """

    epochs: int = 50
    lr: float = 0.015
    head_lr_scale: float = 0.1
    clip_grad: float | None = 1.0
    phases: tuple[Literal["tii", "wtp", "tap"], ...] = ("tii", "wtp", "tap")
    tii_epochs: int = 20
    tii_lr: float = 2.5e-4
    tii_replay_epochs: int = 30
    tii_replay_lr: float = 2.5e-3
    tap_epochs: int = 30
    tap_lr: float = 0.005
    tap_optimizer: Literal["sgd", "adamw"] = "sgd"
    n_centroids: int = 10
    tap_centroids: int = 10
    samples_per_class: int = 256
    contrastive_weight: float = 0.1
    tau: float = 0.8

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"phases"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {"tii_lr", "tii_replay_lr", "tap_lr", "n_centroids", "tap_centroids", "samples_per_class", "tau"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tii_epochs", "tii_replay_epochs", "tap_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.n_centroids < 1 or self.tap_centroids < 1 or self.samples_per_class < 1:
            raise ValueError("n_centroids, tap_centroids, samples_per_class: must be >= 1")
        if self.tau <= 0:
            raise ValueError(f"tau: must be > 0, got {self.tau}")


class HiDePhases:
    """Strategy mixin: ``run_tii_phase``, ``run_tap_phase``, ``predict_tasks``, task-routed
    ``predict_logits``, ``contrastive_term`` and the phase statistics' ``method_state_dict``."""

    tii_stats: ClassGaussians
    tap_stats: ClassGaussians

    def _init_hide(self) -> None:
        self.tii_stats = ClassGaussians()
        self.tap_stats = ClassGaussians()
        self._feature_cache: dict[str, tuple[int, Tensor, Tensor]] = {}

    # -- features -----------------------------------------------------------------------------
    def _experience_features(self, kind: str, fn: Any) -> tuple[Tensor, Tensor]:
        """Features of the current experience's training set (eval transforms), cached per task."""
        cached = self._feature_cache.get(kind)
        if cached is not None and cached[0] == self.task_id:
            return cached[1], cached[2]
        was_training = self.model.training
        self.model.eval()
        feats, labels = extract_features(
            fn, self.experience.dataset.eval(), batch_size=self.eval_mb_size, device=self.device,
            desc=f"{kind} features (task {self.task_id})", autocast=True, progress=self.progress,
        )
        self.model.train(was_training)
        self._feature_cache[kind] = (self.task_id, feats, labels)
        return feats, labels

    def query_features(self) -> tuple[Tensor, Tensor]:
        """Unprompted features of the current task's training data (cached for the whole task)."""
        return self._experience_features("query", self.model.plain_features)

    # -- phases -------------------------------------------------------------------------------
    def run_tii_phase(self) -> None:
        cfg, task = self.cfg, self.task_id
        feats, labels = self.query_features()
        classes = self.task_classes[task]
        if cfg.tii_epochs:
            train_head_on_features(
                self.model.tii, feats, labels, classes=classes, num_classes=self.num_classes,
                epochs=cfg.tii_epochs, lr=cfg.tii_lr, batch_size=self.train_mb_size,
                generator=self.generator, device=self.device,
            )
        self.tii_stats.fit(feats, labels, n_centroids=cfg.n_centroids, generator=self.generator)
        if task > 0 and cfg.tii_replay_epochs:
            train_head_on_gaussians(
                self.model.tii, self.tii_stats, classes=self.seen_classes, num_classes=self.num_classes,
                epochs=cfg.tii_replay_epochs, lr=cfg.tii_replay_lr, samples_per_class=cfg.samples_per_class,
                batch_size=self.train_mb_size, generator=self.generator, device=self.device,
            )

    def run_tap_phase(self) -> None:
        cfg, task = self.cfg, self.task_id
        fn = lambda x: self.task_features(x, task)  # noqa: E731
        feats, labels = self._experience_features("prompted", fn)
        self.tap_stats.fit(feats, labels, n_centroids=cfg.tap_centroids, generator=self.generator)
        if task > 0 and cfg.tap_epochs:
            train_head_on_gaussians(
                self.model.head, self.tap_stats, classes=self.seen_classes, num_classes=self.num_classes,
                epochs=cfg.tap_epochs, lr=cfg.tap_lr, samples_per_class=cfg.samples_per_class,
                batch_size=self.train_mb_size, optimizer=cfg.tap_optimizer, generator=self.generator,
                device=self.device,
            )

    # -- inference and regulariser ------------------------------------------------------------
    def predict_tasks(self, x: Tensor) -> Tensor:
        """Task id per sample ``(B,)`` from the TII head on unprompted features (the query pass)."""
        logits = self.model.tii(self.model.plain_features(x).float())
        cls = mask_logits(logits, self._class_mask(self.seen_classes)).argmax(-1)
        return self._task_of_class()[cls]

    def contrastive_term(self, features: Tensor | None) -> Tensor | None:
        cfg = self.cfg
        if features is None or not cfg.contrastive_weight:
            return None
        old = [c for t in range(self.task_id) for c in self.task_classes[t] if c in self.tap_stats.means]
        protos = self.tap_stats.prototypes(old) if old else None
        return cfg.contrastive_weight * contrastive_regulariser(features, protos, cfg.tau)

    def predict_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Task-routed inference: the oracle task id, else TII's, else (TII ablated) the newest task."""
        if task_ids is None:
            task_ids = self.predict_tasks(x) if "tii" in self.cfg.phases else self.model.num_tasks - 1
        return self.model(x, task_ids)

    def method_state_dict(self) -> dict:
        return {"tii_stats": self.tii_stats.state_dict(), "tap_stats": self.tap_stats.state_dict()}

    def load_method_state_dict(self, state: dict) -> None:
        self.tii_stats.load_state_dict(state["tii_stats"])
        self.tap_stats.load_state_dict(state["tap_stats"])
        self._feature_cache = {}
