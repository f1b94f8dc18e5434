"""HiDe-Prompt's phases for strategies (METHODS.md §3): TII before, TAP after each task's WTP.

:class:`HiDeConfig` holds the phase settings (defaults: the official recipe, docs/methods.md
"Recipes"); :class:`HiDePhases` is a strategy mixin that runs them with the plain functions of
:mod:`training.phases`: the TII head on fresh augmented views (or cached features), the class
statistics on eval-transform features cached per task, replay and TAP on Gaussian samples. The mixin needs a model
with ``plain_features(x)``, ``tii`` (a ``TaskIdentityHead``) and ``head``, and a strategy method
``task_features(x, task_id)`` giving prompted features with the task's own prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..engine import mask_logits
from .config import LRSchedule, MethodConfig
from .features import extract_features
from .phases import (
    ClassGaussians,
    contrastive_regulariser,
    train_head_on_features,
    train_head_on_gaussians,
    train_head_on_images,
)

#: HiDe-phase enumerations shared by every config that runs the phases (one spelling each).
Phase = Literal["tii", "wtp", "tap"]
TapOptimizer = Literal["sgd", "adamw"]
TapSchedule = Literal["cosine", "cosine_iter"]
KMeansName = Literal["lloyd", "sklearn"]

__all__ = ["HiDeConfig", "HiDePhases"]


@dataclass(frozen=True)
class HiDeConfig(MethodConfig):
    """HiDe-Prompt's phase settings (CIFAR-100 Sup-21K scripts at batch 128: lrs scaled by 128/256).

    Sources: HiDe-Prompt ``training_scripts/train_cifar100_vit.sh``, ``configs/cifar100_hideprompt_5e.py``,
    ``trainers/{tii,hideprompt}_trainer.py`` and ``engines/hide_{tii,promtp_wtp_and_tap}_engine.py``
    (the recipe table in docs/methods.md names each line).

    Attributes:
        lr_schedule / lr_step_epochs / lr_step_gamma: WTP ``--sched step`` (×0.1 every 30 epochs).
        phases: which of ``("tii", "wtp", "tap")`` run.
        tii_epochs / tii_lr: TII head (Adam, ``--lr 0.0005``·128/256, CUB 0.01·128/256).
        tii_input: ``"augmented"`` (official: the TII head trains on the features of the training
            transform's fresh view of every image each epoch, ``train_one_epoch``) or ``"cached"``
            (unprompted eval-transform features computed once per task: ~``tii_epochs``× cheaper).
        tii_clip_grad: TII gradient-norm clip (``--clip-grad`` 1.0; ``None``: none).
        tii_replay_epochs / tii_replay_lr: TII head re-trained on Gaussian replay of all seen classes
            (SGD, ``crct_epochs`` 30, ``ca_lr`` 0.005 scaled by batch/256 in ``tii_trainer.py``).
        tap_epochs / tap_lr / tap_optimizer: head realignment on Gaussian samples (SGD, ``ca_lr`` 0.005
            not batch-scaled in ``hideprompt_trainer.py``, ``crct_epochs`` 30).
        tap_lr_schedule / tap_lr_min: TAP's schedule: ``"cosine"`` per epoch (HiDe) or
            ``"cosine_iter"`` per iteration (SMoPE), down to ``tap_lr_min``. TII replay: cosine per epoch.
        replay_sampling: ``"official"``: per epoch ``batch`` samples per centroid, shuffled, one
            iteration of ``batch`` samples per previous-task class (HiDe / SMoPE); ``"per_class"``:
            ``samples_per_class`` per class, a full pass in batches of ``train_mb_size``.
        tii_replay_batch_ratio / tap_batch_ratio: the official replay's batch (= samples per centroid)
            is ``int(train_mb_size × ratio)``: TII replay 1 (``num_sampled_pcls = batch_size``), TAP 5
            (``batch_size * 5``); SMoPE's ``ca_batch_size_ratio``.
        replay_weight_decay: weight decay of TII replay and TAP: 0.0 in HiDe (the parameter group's
            ``args.weight_decay``, which argparse resolves to ``--weight-decay``'s 0.0 — the later
            ``--weight_decay 5e-4`` shares its dest and loses; the group value overrides SGD's 5e-4).
        n_centroids: KMeans centroids per class for the TII statistics (10).
        tap_centroids: centroids per class for the TAP statistics (HiDe 10; SMoPE 1).
        samples_per_class: Gaussian samples per class per epoch under ``replay_sampling="per_class"``.
        contrastive_weight / tau: WTP's contrastive regulariser (reg 0.1 CIFAR, 0.01 CUB, 0.5 IN-R).
        world_size: ranks of the data-parallel run reproduced (HiDe's scripts: 8 GPUs). The global
            batch ``train_mb_size`` is split into ``world_size`` *virtual ranks* of ``train_mb_size /
            world_size`` samples (the per-rank batch; it must divide): the WTP regulariser is
            computed per rank chunk and averaged (DDP's gradient mean), and the TII replay / TAP
            draw their ``int(per-rank batch × ratio)`` samples per centroid once per virtual rank,
            each iteration taking one slice of every rank's draw. 1 (default): the whole batch is one
            rank (so one device reproduces 8 × 24 with ``train_mb_size=192, world_size=8``).
        lr_rank_scaling: ``True``: ``lr``, ``tii_lr`` and ``tii_replay_lr`` are the scripts' base
            values, trained at ``value × per-rank batch / 256`` (HiDe ``trainers/hideprompt_trainer.py``
            and ``tii_trainer.py``: ``args.lr * batch_size / 256`` with ``--unscale_lr``; ``tap_lr`` is
            not scaled). ``False`` (default): the values are used as given.
        kmeans: the class statistics' clustering: ``"sklearn"`` (default; the official
            ``KMeans(n_clusters)`` with scikit-learn 1.0.2's defaults: ``n_init=10``, k-means++,
            ``max_iter=300``, ``tol=1e-4``; means and variances in float64; training/sklearn_kmeans.py)
            or ``"lloyd"`` (our former default: one k-means++ seeding, ≤ 20 Lloyd steps). ``"lloyd"`` is
            measured *not* equivalent (inertia up to 2× scikit-learn's, blobs split or merged;
            docs/methods.md "Conformance") and is kept only as the pin that reproduces the kit and CI
            figures recorded with it.
        eval_seen_mask: ``True`` (ours): predictions are masked to the classes seen so far;
            ``False``: the official evaluation's unmasked logits over all classes.
        bf16_autocast: ``True`` (ours): bf16 autocast on CUDA in the prompted passes; ``False``: fp32
            throughout (the official code).
    """

    epochs: int = 50
    lr: float = 0.015
    head_lr_scale: float = 0.1
    clip_grad: float | None = 1.0
    lr_schedule: LRSchedule = "step"
    phases: tuple[Phase, ...] = ("tii", "wtp", "tap")
    tii_epochs: int = 20
    tii_lr: float = 2.5e-4
    tii_input: Literal["augmented", "cached"] = "augmented"
    tii_clip_grad: float | None = 1.0
    tii_replay_epochs: int = 30
    tii_replay_lr: float = 2.5e-3
    tap_epochs: int = 30
    tap_lr: float = 0.005
    tap_optimizer: TapOptimizer = "sgd"
    tap_lr_schedule: TapSchedule = "cosine"
    tap_lr_min: float = 0.0
    replay_sampling: Literal["official", "per_class"] = "official"
    tii_replay_batch_ratio: float = 1.0
    tap_batch_ratio: float = 5.0
    replay_weight_decay: float = 0.0
    n_centroids: int = 10
    tap_centroids: int = 10
    samples_per_class: int = 256
    contrastive_weight: float = 0.1
    tau: float = 0.8
    world_size: int = 1
    lr_rank_scaling: bool = False
    kmeans: KMeansName = "sklearn"
    eval_seen_mask: bool = True
    bf16_autocast: bool = True

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset({"phases"})
    POSITIVE: ClassVar[frozenset[str]] = frozenset(
        {"tii_lr", "tii_replay_lr", "tap_lr", "n_centroids", "tap_centroids", "samples_per_class", "tau", "world_size"}
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
        if self.tii_clip_grad is not None and self.tii_clip_grad <= 0:
            raise ValueError(f"tii_clip_grad: must be > 0 or None, got {self.tii_clip_grad}")
        for name in ("tii_replay_batch_ratio", "tap_batch_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.replay_weight_decay < 0:
            raise ValueError(f"replay_weight_decay: must be >= 0, got {self.replay_weight_decay}")
        if not 0 <= self.tap_lr_min < self.tap_lr:
            raise ValueError(f"tap_lr_min: must be in [0, tap_lr={self.tap_lr}), got {self.tap_lr_min}")


class HiDePhases:
    """Strategy mixin: ``run_tii_phase``, ``run_tap_phase``, ``predict_tasks``, task-routed
    ``inference_logits``, ``contrastive_term``, the phase statistics' ``method_state_dict``, and the
    recipe items of :class:`HiDeConfig` (virtual ranks, lr scaling, evaluation mask, precision)."""

    tii_stats: ClassGaussians
    tap_stats: ClassGaussians

    def _init_hide(self) -> None:
        self.tii_stats = ClassGaussians()
        self.tap_stats = ClassGaussians()
        self._feature_cache: dict[str, tuple[int, Tensor, Tensor]] = {}

    # -- features -----------------------------------------------------------------------------
    def statistics_source(self) -> tuple[Any, bool]:
        """``(dataset, bf16 autocast)`` the phase statistics' features come from: the current
        experience's training set with eval transforms, bf16 autocast on CUDA unless
        ``bf16_autocast=False`` (SMoPE's official recipe overrides it: training transform, fp32)."""
        return self.experience.dataset.eval(), self.cfg.bf16_autocast

    def tap_first_lr(self) -> float | None:
        """The TAP's first-iteration lr under SMoPE's official schedule lag (``None``: no lag)."""
        return None

    def _experience_features(self, kind: str, fn: Any) -> tuple[Tensor, Tensor]:
        """Features of the current experience's training set (:meth:`statistics_source`), cached per task."""
        cached = self._feature_cache.get(kind)
        if cached is not None and cached[0] == self.task_id:
            return cached[1], cached[2]
        was_training = self.model.training
        self.model.eval()
        dataset, autocast = self.statistics_source()
        feats, labels = extract_features(
            fn, dataset, batch_size=self.eval_mb_size, device=self.device,
            desc=f"{kind} features (task {self.task_id})", autocast=autocast, progress=self.progress,
        )
        self.model.train(was_training)
        self._feature_cache[kind] = (self.task_id, feats, labels)
        return feats, labels

    def query_features(self) -> tuple[Tensor, Tensor]:
        """Unprompted features of the current task's training data (cached for the whole task)."""
        return self._experience_features("query", self.model.plain_features)

    # -- recipe items -------------------------------------------------------------------------
    def rank_batch(self) -> int:
        """The per-rank batch ``train_mb_size / world_size`` of the run reproduced (``world_size`` 1:
        the whole batch)."""
        n = self.cfg.world_size
        if self.train_mb_size % n:
            raise ValueError(f"world_size: train_mb_size={self.train_mb_size} is not a multiple of world_size={n}; "
                             f"give the global batch (per-rank batch × world_size, e.g. 24 × 8 = 192)")
        return self.train_mb_size // n

    def scaled_lr(self, lr: float) -> float:
        """``lr × per-rank batch / 256`` under ``lr_rank_scaling`` (HiDe's trainers), else ``lr``."""
        return lr * self.rank_batch() / 256 if self.cfg.lr_rank_scaling else lr

    def training_config(self) -> HiDeConfig:
        """The config the WTP optimizer and schedule are built from: ``lr`` scaled (:meth:`scaled_lr`)."""
        cfg = self.cfg
        return replace(cfg, lr=self.scaled_lr(cfg.lr)) if cfg.lr_rank_scaling else cfg

    def eval_mask_classes(self) -> list[int] | None:
        """Predictions are masked to the seen classes, or unmasked (``eval_seen_mask=False``, official)."""
        return self.seen_classes if self.cfg.eval_seen_mask else None

    def _autocast(self):
        return super()._autocast() if self.cfg.bf16_autocast else nullcontext()  # type: ignore[misc]

    # -- phases -------------------------------------------------------------------------------
    def replay_batch(self, ratio: float) -> int:
        """The official replay's batch per rank (= samples per centroid): ``int(per-rank batch × ratio)``, ≥ 1."""
        return max(1, int(self.rank_batch() * ratio))

    def _tii_image_loader(self):
        """``epoch → batches`` of the current experience's training set with its *training* transform
        (a fresh augmented view each epoch), shuffled by the strategy's generator."""
        from torch.utils.data import DataLoader

        dataset = self.experience.dataset.train()

        def loader(_epoch: int):
            return DataLoader(dataset, batch_size=self.train_mb_size, shuffle=True, generator=self.generator)

        return loader

    def run_tii_phase(self) -> None:
        cfg, task = self.cfg, self.task_id
        classes = self.task_classes[task]
        if cfg.tii_epochs:
            if cfg.tii_input == "augmented":
                was_training = self.model.training
                self.model.eval()  # frozen backbone in eval mode; only the TII head trains

                def plain(x: Tensor) -> Tensor:
                    with self._autocast():
                        return self.model.plain_features(x)

                train_head_on_images(
                    self.model.tii, plain, self._tii_image_loader(), classes=classes,
                    num_classes=self.num_classes, epochs=cfg.tii_epochs, lr=self.scaled_lr(cfg.tii_lr), clip_grad=cfg.tii_clip_grad,
                    device=self.device, progress=self.progress, desc=f"TII (task {task})",
                )
                self.model.train(was_training)
            else:
                feats, labels = self.query_features()
                train_head_on_features(
                    self.model.tii, feats, labels, classes=classes, num_classes=self.num_classes,
                    epochs=cfg.tii_epochs, lr=self.scaled_lr(cfg.tii_lr), batch_size=self.train_mb_size,
                    clip_grad=cfg.tii_clip_grad,
                    generator=self.generator, device=self.device, progress=self.progress, desc=f"TII (task {task})",
                )
        feats, labels = self.query_features()
        self.tii_stats.fit(feats, labels, n_centroids=cfg.n_centroids, generator=self.generator, method=cfg.kmeans)
        if task > 0 and cfg.tii_replay_epochs:
            train_head_on_gaussians(
                self.model.tii, self.tii_stats, classes=self.seen_classes, num_classes=self.num_classes,
                epochs=cfg.tii_replay_epochs, lr=self.scaled_lr(cfg.tii_replay_lr), samples_per_class=cfg.samples_per_class,
                batch_size=self._replay_batch_size(cfg.tii_replay_batch_ratio), optimizer="sgd",
                weight_decay=cfg.replay_weight_decay, generator=self.generator, device=self.device,
                sampling=cfg.replay_sampling, previous_classes=self._previous_class_count(), schedule="cosine",
                ranks=cfg.world_size, progress=self.progress, desc=f"TII replay (task {task})",
            )

    def _previous_class_count(self) -> int:
        """Classes of the tasks before the current one (``crct_num``: the official replay's iterations)."""
        return sum(len(c) for c in self.task_classes[: self.task_id])

    def _replay_batch_size(self, ratio: float) -> int:
        return self.replay_batch(ratio) if self.cfg.replay_sampling == "official" else self.train_mb_size

    def run_tap_phase(self) -> None:
        cfg, task = self.cfg, self.task_id
        fn = lambda x: self.task_features(x, task)  # noqa: E731
        feats, labels = self._experience_features("prompted", fn)
        self.tap_stats.fit(feats, labels, n_centroids=cfg.tap_centroids, generator=self.generator, method=cfg.kmeans)
        if task > 0 and cfg.tap_epochs:
            train_head_on_gaussians(
                self.model.head, self.tap_stats, classes=self.seen_classes, num_classes=self.num_classes,
                epochs=cfg.tap_epochs, lr=cfg.tap_lr, samples_per_class=cfg.samples_per_class,
                batch_size=self._replay_batch_size(cfg.tap_batch_ratio), optimizer=cfg.tap_optimizer,
                weight_decay=cfg.replay_weight_decay, generator=self.generator, device=self.device,
                sampling=cfg.replay_sampling, previous_classes=self._previous_class_count(),
                schedule=cfg.tap_lr_schedule, lr_min=cfg.tap_lr_min, first_lr=self.tap_first_lr(),
                ranks=cfg.world_size, progress=self.progress,
                desc=f"TAP (task {task})",
            )

    # -- inference and regulariser ------------------------------------------------------------
    def predict_tasks(self, x: Tensor) -> Tensor:
        """Task id per sample ``(B,)`` from the TII head on unprompted features (the query pass)."""
        logits = self.model.tii(self.model.plain_features(x).float())
        cls = mask_logits(logits, self._class_mask(self.seen_classes)).argmax(-1)
        return self._task_of_class()[cls]

    def contrastive_term(self, features: Tensor | None) -> Tensor | None:
        """``contrastive_weight ×`` the regulariser of each virtual rank's chunk of ``features``
        (``rank_batch()`` samples; a short last batch ends with a shorter chunk), averaged."""
        cfg = self.cfg
        if features is None or not cfg.contrastive_weight:
            return None
        old = [c for t in range(self.task_id) for c in self.task_classes[t] if c in self.tap_stats.means]
        protos = self.tap_stats.prototypes(old) if old else None
        chunks = features.split(self.rank_batch()) if cfg.world_size > 1 else (features,)
        reg = torch.stack([contrastive_regulariser(f, protos, cfg.tau) for f in chunks]).mean()
        return cfg.contrastive_weight * reg

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
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
