"""Bring your own optimizer, scheduler and criterion (the strategies' ``optimizer=``, ``lr_scheduler=``
and ``criterion=`` keywords).

The strategies build a fresh optimizer at every experience (the trainable parameters change: new
prompts, frozen old ones), so a user optimizer or scheduler is given as a *factory*, called each time:

* ``optimizer=lambda params: torch.optim.SGD(params, momentum=0.9)`` or
  ``functools.partial(torch.optim.SGD, momentum=0.9)``; ``params`` is the list of the model's
  trainable parameter groups, ``[{"params": [...], "lr": lr, "name": "prompts"},
  {"params": [...], "lr": lr * head_lr_scale, "name": "head"}]``. Each group carries its own
  ``lr`` (set the rate with the strategy's ``lr=`` / ``head_lr_scale=`` keywords: an ``lr`` given to
  the factory is only a default, which these groups override).
* ``lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)``, built on
  each experience's optimizer and stepped after every training epoch (``lr_scheduler_interval=
  "iteration"``: after every iteration). It replaces the method's default ``lr_schedule``; an
  ``lr_schedule`` asked for explicitly (keyword or ``config=``) must then be ``"constant"``.

Both apply to the Avalanche training loop (HiDe's WTP, SMoPE's dense warm-up and sparse epochs); the
HiDe phases TII and TAP train their heads on cached features with their own optimizers
(``tii_lr``, ``tap_lr``, ``tap_optimizer``).

Avalanche's ``LRSchedulerPlugin`` wraps a scheduler bound to one optimizer object, which the
per-experience rebuild would leave stepping a dead optimizer; it is refused with a message pointing
to ``lr_scheduler=``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "OptimizerFactory",
    "SchedulerFactory",
    "build_optimizer",
    "build_user_scheduler",
    "check_plugins_for_optimizer",
    "check_scheduler_keywords",
    "describe_overrides",
    "split_optimizer_keyword",
]

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
Criterion = Callable[[Tensor, Tensor], Tensor]

SCHEDULER_INTERVALS = ("epoch", "iteration")


def split_optimizer_keyword(kwargs: dict[str, Any]) -> OptimizerFactory | None:
    """Pop ``optimizer`` from ``kwargs`` when it is a factory (a string stays: a config field).

    Raises:
        TypeError: an optimizer *instance* (it cannot be rebuilt per experience), or another type.
    """
    spec = kwargs.get("optimizer")
    if spec is None or isinstance(spec, str):
        return None
    kwargs.pop("optimizer")
    if isinstance(spec, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer: got a {type(spec).__name__} instance; the strategy builds a fresh optimizer at "
            f"every experience, so pass a factory instead, e.g. "
            f"optimizer=lambda params: torch.optim.{type(spec).__name__}(params, ...)"
        )
    if not callable(spec):
        raise TypeError(f"optimizer: expected 'adam', 'adamw', 'sgd' or a factory params -> Optimizer, got {spec!r}")
    return spec


def check_scheduler_keywords(factory: SchedulerFactory | None, interval: str, lr_schedule: str | None) -> None:
    """Validate ``lr_scheduler`` / ``lr_scheduler_interval`` against an ``lr_schedule`` the user asked for
    explicitly (``None``: the method's default, which a user scheduler replaces)."""
    if interval not in SCHEDULER_INTERVALS:
        raise ValueError(f"lr_scheduler_interval: expected 'epoch' or 'iteration', got {interval!r}")
    if factory is None:
        return
    if isinstance(factory, torch.optim.lr_scheduler.LRScheduler) or not callable(factory):
        raise TypeError(
            f"lr_scheduler: expected a factory optimizer -> scheduler (the optimizer is rebuilt every "
            f"experience), e.g. lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2), got {factory!r}"
        )
    if lr_schedule not in (None, "constant"):
        raise ValueError(
            f"lr_scheduler: a user scheduler replaces the method's lr_schedule={lr_schedule!r}; "
            f"pass lr_schedule='constant' with it"
        )


def check_plugins_for_optimizer(plugins: Sequence[Any]) -> None:
    """Refuse Avalanche's ``LRSchedulerPlugin`` (its scheduler is bound to one optimizer object)."""
    from avalanche.training.plugins import LRSchedulerPlugin

    for p in plugins:
        if isinstance(p, LRSchedulerPlugin):
            raise ValueError(
                "plugins: LRSchedulerPlugin holds a scheduler bound to one optimizer, but this strategy "
                "builds a fresh optimizer at every experience, so the plugin would step a dead optimizer; "
                "pass a scheduler factory instead: "
                "lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=..., gamma=...) "
                "(stepped per epoch; lr_scheduler_interval='iteration' steps it per iteration)"
            )


def build_optimizer(groups: list[dict[str, Any]], cfg: Any, factory: OptimizerFactory | None) -> torch.optim.Optimizer:
    """The experience's optimizer over ``groups`` (each with its own ``lr``).

    Without a factory: ``cfg.optimizer`` (``"adam"`` β = 0.9, 0.999; ``"adamw"``; ``"sgd"`` momentum
    0.9) with ``cfg.weight_decay``.
    """
    if factory is not None:
        opt = factory(groups)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer: the factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
        given = {id(p) for g in opt.param_groups for p in g["params"]}
        wanted = {id(p) for g in groups for p in g["params"]}
        if not wanted <= given:
            raise ValueError(
                "optimizer: the factory's optimizer does not hold every trainable parameter; build it on "
                "the `params` argument it receives"
            )
        return opt
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def build_user_scheduler(factory: SchedulerFactory, optimizer: torch.optim.Optimizer) -> Any:
    """Call the scheduler factory on the experience's optimizer; the result must have ``step()``."""
    sched = factory(optimizer)
    if not callable(getattr(sched, "step", None)):
        raise TypeError(f"lr_scheduler: the factory returned {type(sched).__name__}, which has no step()")
    return sched


def describe_overrides(optimizer: OptimizerFactory | None, lr_scheduler: SchedulerFactory | None, interval: str,
                       criterion: Criterion | None) -> dict[str, str]:
    """``{"optimizer": ..., "lr_scheduler": ..., "criterion": ...}`` for the user-supplied ones only
    (short descriptions for run logs: the method config's ``optimizer`` / ``lr_schedule`` do not
    describe a run that replaced them)."""
    out = {}
    if optimizer is not None:
        out["optimizer"] = f"factory {_describe(optimizer)}"
    if lr_scheduler is not None:
        out["lr_scheduler"] = f"factory {_describe(lr_scheduler)} per {interval}"
    if criterion is not None:
        out["criterion"] = _describe(criterion)
    return out


def _describe(obj: Any) -> str:
    import functools

    if isinstance(obj, functools.partial):
        kw = ", ".join(f"{k}={v!r}" for k, v in obj.keywords.items())
        return f"{_describe(obj.func)}({kw})"
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return str(name)[:200]
