"""The per-experience optimizer and learning-rate schedule of :class:`PromptStrategyBase` (a mixin).

A fresh optimizer is built at every experience over the model's trainable parameter groups (new
prompts appear, old ones freeze), with the method's ``lr_schedule`` or the user's ``lr_scheduler=``
factory (training/optim.py); methods override :meth:`training_config`, :meth:`schedule_epochs` and
:meth:`schedule_options`.
"""

from __future__ import annotations

from typing import Any

from .optim import build_optimizer, build_user_scheduler
from .schedules import build_lr_scheduler

__all__ = ["OptimizerSetupMixin"]


class OptimizerSetupMixin:
    """``make_optimizer`` (Avalanche's hook) and the schedule hooks methods override."""

    def training_config(self) -> Any:
        """The config the main phase's optimizer and lr schedule are built from (default ``cfg``)."""
        return self.cfg

    def make_optimizer(self, **kwargs: Any) -> None:
        """A fresh optimizer per experience over the trainable parameter groups only."""
        cfg = self.training_config()
        groups = [g for g in self.model.param_groups(cfg) if any(p.requires_grad for p in g["params"])]
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
        if not groups:
            raise RuntimeError(f"{type(self).__name__}: the model has no trainable parameters")
        self.model.zero_grad(set_to_none=True)  # none left from an earlier phase or experience
        opt = build_optimizer(groups, cfg, self._optimizer_factory)
        self.optimizer = opt
        if self._lr_scheduler_factory is not None:  # the user's scheduler replaces lr_schedule
            self._scheduler = build_user_scheduler(self._lr_scheduler_factory, opt)
            self._scheduler_per_iteration = self._lr_scheduler_interval == "iteration"
            return
        options = dict(
            epochs=self.schedule_epochs(),
            iters_per_epoch=len(self.dataloader) if cfg.lr_schedule == "cosine_iter" else None,
            lr_min=cfg.lr_min, freeze_iters=cfg.lr_freeze_iters,
            step_epochs=cfg.lr_step_epochs, step_gamma=cfg.lr_step_gamma,
        )
        options.update(self.schedule_options())
        self._scheduler, self._scheduler_per_iteration = build_lr_scheduler(opt, cfg.lr_schedule, **options)

    def schedule_epochs(self) -> int:
        """Epochs the learning-rate schedule built by :meth:`make_optimizer` spans."""
        return self.train_epochs

    def schedule_options(self) -> dict[str, Any]:
        """Keywords of ``build_lr_scheduler`` a method overrides (SMoPE's official recipe: the
        cosine's iterations per epoch and its one-iteration lag); none by default."""
        return {}

