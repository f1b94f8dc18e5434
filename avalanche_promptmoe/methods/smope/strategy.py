"""``SMoPEStrategy``: SMoPE as an Avalanche strategy."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from avalanche.training.plugins import EarlyStoppingPlugin
from torch import Tensor, nn

from ...routing import ExpertUsage
from ...training.base_strategy import PromptStrategyBase
from ...training.features import extract_features
from ...training.hide import HiDePhases
from ...training.losses import router_margin_loss
from ...training.plugins import PhaseSchedulerPlugin, PrototypeLossPlugin, RoutingHistoryPlugin
from .config import SMoPEConfig
from .model import SMoPEModel

__all__ = ["SMoPEStrategy", "count_batch", "router_loss"]


def count_batch(model: SMoPEModel, usage: ExpertUsage, x: Tensor, *, live: bool = False) -> Tensor:
    """One batch of the post-task count pass: an eval-mode forward, then the top-K of each layer's
    unpenalised scores added to ``usage.pending``. Returns the features ``(B, D)``.

    ``live`` (the official recipe): before the forward, the inference exclusion is reset to the
    experts with zero count *so far* (committed + this pass), as the official pass runs with
    ``train=False`` and ``e_freq`` growing after every batch (``learners/prompt.py:404-422``,
    ``models/zoo.py:166-228`` @27b982c5): experts not yet counted in this pass are excluded.
    Otherwise the exclusion set fixed before the pass applies (ours).
    """
    if live:
        model.set_usage(model.frequent.cpu(), ((usage.counts + usage.pending) == 0))
    feats = model.forward_features(x)
    for layer, idx in model.unpenalised_top_k().items():
        usage.record(model.pool.pos(layer), idx)
    return feats


def router_loss(model: SMoPEModel, epsilon: float) -> Tensor:
    """The unweighted router loss of the model's last sparse forward, summed over layers, heads and
    the K targets with a batch mean as the released code (``OnePrompt.router_loss``,
    ``models/zoo.py:75-108``): ``Σ_l H · K · router_margin_loss``."""
    scores, routing = model.last_scores, model.last_routing
    per_layer = [router_margin_loss(scores[i].float(), routing[i].indices, epsilon) for i in model.layers]
    return torch.stack(per_layer).sum() * (model.vit.num_heads * model.top_k)

log = logging.getLogger(__name__)


class SMoPEStrategy(HiDePhases, PromptStrategyBase):
    """Sparse Mixture of Prompt Experts (Le et al., ICLR 2026, arXiv 2509.24483) on a frozen timm ViT.

    Per task: prompt + head training (sparse top-K selection with adaptive noise on the frequent
    experts, task-masked CE + α_router · router loss, + α_proto · prototype loss from the second task
    on; the first task starts with a dense warm-up, then the optimizer is reset), then an eval-mode
    pass over the task's training data that counts the top-K hits of the unpenalised scores (the
    usage behind the noise), then TAP (head realignment on class Gaussians, tasks ≥ 2).
    Inference: one prompted pass (experts never selected in training are excluded), then the head —
    no query pass, no task-identity head.

    Keywords: those of :class:`PromptStrategyBase` and every field of :class:`SMoPEConfig`.

    Attributes:
        routing_history: the :class:`RoutingHistoryPlugin` holding the ``ExpertUsage`` counts
            ``(layers, H, E)`` (rule ``"above_mean"``); filled by the post-task counting pass.
        epoch_modes: ``(task, "dense" | "sparse")`` per training epoch that ran, in order (an epoch that
            early stopping skipped is not listed).
        last_router_loss: the unweighted router loss of the last training step (``None`` when dense).
    """

    config_cls = SMoPEConfig
    method_name = "smope"

    # ------------------------------------------------------------------ construction
    def build_model(self, backbone: nn.Module) -> SMoPEModel:
        cfg = self.cfg
        self._init_hide()
        self.epoch_modes: list[tuple[int, str]] = []
        self.last_router_loss: Tensor | None = None
        self._dense_epochs_left = 0
        self._sparse_epochs: int | None = None
        model = SMoPEModel(
            backbone, self.num_classes, layers=cfg.layers, num_experts=cfg.num_experts, top_k=cfg.top_k,
            epsilon=cfg.epsilon, inference_epsilon=cfg.inference_epsilon, prompt_init=cfg.prompt_init,
            generator=self.generator,
        )
        self._usage_shape = (len(model.layers), model.vit.num_heads, cfg.num_experts)
        return model

    def default_plugins(self) -> list[Any]:
        cfg = self.cfg
        usage = ExpertUsage(*self._usage_shape, rule="above_mean")
        # order matters after each task: commit the counts, then TAP, then save the prototype keys
        self.routing_history = RoutingHistoryPlugin(usage=usage, record_training=False)
        self.phase_scheduler = PhaseSchedulerPlugin(phases=cfg.phases)
        self.prototype_loss = PrototypeLossPlugin(weight=cfg.proto_weight)
        return [self.routing_history, self.phase_scheduler, self.prototype_loss]

    # ------------------------------------------------------------------ per-task hooks
    def expert_usage(self) -> Tensor:
        """SMoPE's cumulative top-K hits ``(layers, heads, num_experts)`` (int64) of the unpenalised
        scores, counted by the eval-mode pass after each experience and committed at its end: what
        decides the frequent (noised) and never-selected (excluded) experts. Same tensor as
        ``routing_history.usage.counts`` (a copy)."""
        return self.routing_history.usage.counts.clone()

    def prepare_task(self, task_id: int) -> None:
        self._end_dense_phase()  # also undoes a warm-up that an interrupted run left unfinished
        self._sync_usage(include_pending=False)
        dense = int(self.train_epochs * self.cfg.dense_warmup_fraction) if task_id == 0 else 0
        if dense > 0 and "wtp" in self.cfg.phases:
            # the epoch loop runs dense + sparse epochs; _after_training_epoch switches at the boundary
            self._sparse_epochs, self._dense_epochs_left = self.train_epochs, dense
            self.train_epochs += dense
            self.model.dense = True

    def finish_task(self, task_id: int) -> None:
        self._end_dense_phase()
        self.count_usage()
        self._sync_usage(include_pending=True)

    def _end_dense_phase(self) -> None:
        self.model.dense = False
        self._dense_epochs_left = 0
        if self._sparse_epochs is not None:
            self.train_epochs, self._sparse_epochs = self._sparse_epochs, None

    @property
    def official(self) -> bool:
        """Whether the run follows the official code (``recipe = "official"``)."""
        return self.cfg.recipe == "official"

    @torch.no_grad()
    def count_usage(self) -> None:
        """Add the top-K hits of the unpenalised proxy scores over the current experience's training
        data (eval-mode model) to the usage counter's pending counts: ours on the eval transform in
        order with fixed exclusion; the official recipe on the shuffled training loader (training
        transform, ``train_mb_size``, ``drop_last``, fp32) with live exclusion (:func:`count_batch`)."""
        usage, model = self.routing_history.usage, self.model
        was_training = model.training
        model.eval()
        if self.official:
            from torch.utils.data import DataLoader
            from tqdm.auto import tqdm

            loader = DataLoader(self.experience.dataset.train(), batch_size=self.train_mb_size, shuffle=True,
                                drop_last=True, generator=self.generator)
            for batch in tqdm(loader, desc=f"expert usage (task {self.task_id})", leave=False,
                              disable=not self.progress):
                count_batch(model, usage, batch[0].to(self.device), live=True)
            self._sync_usage(include_pending=False)  # back to the committed masks until the commit
        else:
            extract_features(
                lambda x: count_batch(model, usage, x)[:, :1], self.experience.dataset.eval(),
                batch_size=self.eval_mb_size, device=self.device, desc=f"expert usage (task {self.task_id})",
                autocast=True, progress=self.progress,
            )
        model.train(was_training)

    def _sync_usage(self, *, include_pending: bool) -> None:
        """Copy the frequent / never-selected masks into the model; ``include_pending`` previews the
        commit the routing-history plugin is about to make (so TAP and the prototype snapshot see it)."""
        usage = self.routing_history.usage
        if include_pending and bool(usage.pending.any()):
            preview = ExpertUsage(*usage.shape, rule=usage.rule, k=usage.k)
            preview.load_state_dict(usage.state_dict())
            preview.commit(snapshot=False)
            usage = preview
        self.model.set_usage(usage.frequent(), usage.never_selected())

    # ------------------------------------------------------------------ official-recipe switches
    def _autocast(self):
        """fp32 in the official recipe (the official code has no autocast), else the base's bf16."""
        return contextlib.nullcontext() if self.official else super()._autocast()

    def make_train_dataloader(self, **kwargs: Any) -> None:
        """The official loader drops the last partial batch (``trainer.py`` ``drop_last=True``)."""
        if self.official:
            kwargs["drop_last"] = True
        super().make_train_dataloader(**kwargs)

    def schedule_options(self) -> dict[str, Any]:
        """Official recipe, ``cosine_iter``: the lagged ``CosineSchedulerIter`` over
        ``lr_iter_step × epochs`` iterations (the loader's count when ``lr_iter_step`` is None)."""
        cfg = self.cfg
        if not self.official or cfg.lr_schedule != "cosine_iter":
            return {}
        return {"lag": True, "iters_per_epoch": cfg.lr_iter_step or len(self.dataloader)}

    def tap_first_lr(self) -> float | None:
        """Official recipe: TAP's lagged schedule starts at ``tap_first_lr`` (``ca_lr``)."""
        if not self.official:
            return None
        return self.cfg.tap_first_lr if self.cfg.tap_first_lr is not None else self.cfg.tap_lr

    def statistics_source(self) -> tuple[Any, bool]:
        """Official recipe: TAP statistics on the training transform (``_compute_mean`` reads
        ``train_dataset``), fp32; ours: the eval transform."""
        if self.official:
            return self.experience.dataset.train(), False
        return super().statistics_source()

    # ------------------------------------------------------------------ optimiser and epochs
    def schedule_epochs(self) -> int:
        """The dense warm-up has its own schedule cycle over its epochs."""
        return max(1, self._dense_epochs_left) if self.model.dense else super().schedule_epochs()

    def _before_training_epoch(self, **kwargs: Any) -> None:
        self._warmup_bar = None
        if self.model.dense and self.progress:  # the dense warm-up's own bar, with the loss
            from tqdm.auto import tqdm

            self._warmup_bar = tqdm(
                total=len(self.dataloader), leave=False,
                desc=f"dense warm-up (task {self.task_id}, {self._dense_epochs_left} epochs left)",
            )
        super()._before_training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs: Any) -> None:
        bar = getattr(self, "_warmup_bar", None)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(self.loss.detach()):.4f}")
        super()._after_training_iteration(**kwargs)

    def stop_training(self) -> None:
        """An early-stop request (Avalanche's ``EarlyStoppingPlugin``) is ignored inside the dense
        warm-up, a fixed phase; the sparse phase after it can be stopped."""
        if self.model.dense:
            log.info("SMoPE: early stop ignored inside the dense warm-up (%d epochs left)", self._dense_epochs_left)
            return
        super().stop_training()

    def _after_training_epoch(self, **kwargs: Any) -> None:
        self.epoch_modes.append((self.task_id, "dense" if self.model.dense else "sparse"))  # epochs that ran
        bar = getattr(self, "_warmup_bar", None)
        if bar is not None:
            bar.close()
            self._warmup_bar = None
        super()._after_training_epoch(**kwargs)
        if self.model.dense:
            self._dense_epochs_left -= 1
            if self._dense_epochs_left <= 0:  # warm-up over: sparse, with a fresh optimizer
                self._end_dense_phase()
                self.make_optimizer()
                for plugin in self.plugins:  # early stopping judges the sparse phase on its own
                    if isinstance(plugin, EarlyStoppingPlugin):
                        plugin.before_training_exp(self)

    # ------------------------------------------------------------------ forward and losses
    def train_logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def aux_loss(self) -> Tensor | None:
        """α_router · router loss (sparse training only) + the contrastive term when enabled.

        The router loss is summed over layers, heads and the K targets with a batch mean, as the
        released code (``OnePrompt.router_loss``), i.e. ``Σ_l H · K · router_margin_loss``.
        """
        cfg, model = self.cfg, self.model
        loss = self.contrastive_term(model.last_features)
        self.last_router_loss = None
        if model.dense or not cfg.router_weight:
            return loss
        router = router_loss(model, cfg.epsilon)
        self.last_router_loss = router.detach()
        router = cfg.router_weight * router
        return router if loss is None else loss + router

    def task_features(self, x: Tensor, task_id: int) -> Tensor:
        """TAP features: the prompted pre-logit features (eval mode: sparse, inference exclusion)."""
        return self.model.forward_features(x)

    def inference_logits(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """One prompted backbone pass; SMoPE has no task-specific parameters, so ``task_ids`` is unused."""
        return self.model(x)

    # ------------------------------------------------------------------ state
