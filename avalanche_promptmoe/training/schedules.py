"""Learning-rate schedules of the main training phase, built per experience with its optimizer.

* ``"constant"``: no scheduler.
* ``"cosine"``: per epoch, from each group's lr to ``lr_min`` over the phase's epochs.
* ``"cosine_iter"``: per iteration (SMoPE's CIFAR and ImageNet-R scripts): the first
  ``freeze_iters`` iterations run at ``lr_min`` (the scripts' "freeze"), then a cosine from each
  group's lr down to ``lr_min`` over the remaining iterations of the phase.
* ``"step"``: per epoch, HiDe-Prompt's ``--sched step`` as its training loop drives timm's
  ``StepLRScheduler``: the loop calls ``lr_scheduler.step(epoch)`` *after* epoch ``epoch``
  (``engines/hide_promtp_wtp_and_tap_engine.py: train_and_evaluate``), which sets the lr of epoch
  ``epoch + 1`` to ``lr·γ^⌊epoch / interval⌋``. So epoch ``e`` (0-based) trains at
  ``lr·γ^⌊max(e − 1, 0) / interval⌋``: with interval 30, epochs 0–30 at ``lr`` and 31–59 at ``γ·lr``
  (:func:`step_factor`).

``lag=True`` (SMoPE's official recipe) runs ``"cosine_iter"`` as SMoPE's ``CosineSchedulerIter``
is run (``utils/schedulers.py:84-97`` @27b982c5): its constructor's ``step(0)`` fires before the
cosine table exists, so iteration 0 trains at the param group's lr and iteration ``k ≥ 1`` at the
table's entry ``k − 1`` (:func:`lagged_factor`).
* ``"cosine_timm"``: per epoch, HiDe-Prompt's ``--sched cosine`` (ImageNet-R) as the same loop drives
  timm's ``CosineLRScheduler`` (no warm-up, one cycle): epoch ``e`` trains at the cosine's value for
  ``max(e − 1, 0)``, so epochs 0 and 1 both run at ``lr`` (:func:`cosine_timm_factor`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

__all__ = ["SCHEDULES", "build_lr_scheduler", "cosine_iter_factor", "cosine_timm_factor", "lagged_factor",
           "step_factor"]

SCHEDULES = ("constant", "cosine", "cosine_iter", "step", "cosine_timm")


def step_factor(epoch: int, *, interval: int, gamma: float) -> float:
    """``lr(epoch) / lr`` of the ``"step"`` schedule: ``γ^⌊max(epoch − 1, 0) / interval⌋`` (0-based
    epochs; the one-epoch lag is HiDe's ``lr_scheduler.step(epoch)`` after each epoch)."""
    if interval < 1:
        raise ValueError(f"lr_step_epochs: must be >= 1, got {interval}")
    return gamma ** (max(epoch - 1, 0) // interval)


def cosine_timm_factor(base_lr: float, *, epochs: int, lr_min: float) -> Callable[[int], float]:
    """``epoch → lr(epoch) / base_lr`` of ``"cosine_timm"``: ``lr_min + (base_lr − lr_min)·(1 + cos(π·t/T))/2``
    with ``t = max(epoch − 1, 0)`` (the lag of ``lr_scheduler.step(epoch)`` after each epoch), ``T = epochs``."""
    span = max(1, epochs)

    def factor(epoch: int) -> float:
        t = min(max(epoch - 1, 0), span) / span
        return (lr_min + (base_lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))) / base_lr

    return factor


def cosine_iter_factor(base_lr: float, *, total_iters: int, lr_min: float, freeze_iters: int) -> Callable[[int], float]:
    """``step → lr(step) / base_lr`` for ``"cosine_iter"``: ``lr_min`` while ``step < freeze_iters``,
    then ``lr_min + (base_lr − lr_min)·(1 + cos(π·s/S))/2`` with ``s = step − freeze_iters`` and
    ``S = total_iters − freeze_iters`` (``lr_min`` from ``S`` on)."""
    span = max(1, total_iters - freeze_iters)

    def factor(step: int) -> float:
        if step < freeze_iters:
            return lr_min / base_lr
        t = min(step - freeze_iters, span) / span
        return (lr_min + (base_lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))) / base_lr

    return factor


def lagged_factor(factor: Callable[[int], float], first: float = 1.0) -> Callable[[int], float]:
    """SMoPE's one-iteration lag (``CosineSchedulerIter``, ``utils/schedulers.py:84-97`` @27b982c5):
    step 0 at ``first`` (the group's own lr, as a factor of it), step ``k ≥ 1`` at ``factor(k − 1)``."""
    return lambda step: first if step == 0 else factor(step - 1)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    epochs: int,
    iters_per_epoch: int | None = None,
    lr_min: float = 0.0,
    freeze_iters: int = 0,
    step_epochs: int = 30,
    step_gamma: float = 0.1,
    lag: bool = False,
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The scheduler for one training phase and whether it steps per iteration (else per epoch).

    ``iters_per_epoch`` is needed by ``"cosine_iter"`` only; ``step_epochs`` / ``step_gamma`` by
    ``"step"`` only; ``lag`` (``"cosine_iter"`` only) runs it with SMoPE's one-iteration lag
    (:func:`lagged_factor`: iteration 0 at the group's lr). Raises ``ValueError`` on an unknown
    schedule; warns when the frozen start covers the whole phase."""
    if schedule == "constant":
        return None, False
    if schedule == "step":
        step_factor(0, interval=step_epochs, gamma=step_gamma)  # validates the interval
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: step_factor(e, interval=step_epochs, gamma=step_gamma)
        ), False
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=lr_min), False
    if schedule == "cosine_timm":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [
            cosine_timm_factor(g["lr"], epochs=epochs, lr_min=lr_min) for g in optimizer.param_groups
        ]), False
    if schedule != "cosine_iter":
        raise ValueError(f"lr_schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if not iters_per_epoch or iters_per_epoch < 1:
        raise ValueError(f"lr_schedule 'cosine_iter' needs the iterations per epoch, got {iters_per_epoch!r}")
    total = max(1, epochs) * iters_per_epoch
    if freeze_iters >= total:
        warnings.warn(
            f"lr_freeze_iters={freeze_iters} covers the whole phase ({total} iterations): it trains at lr_min "
            f"= {lr_min} throughout",
            RuntimeWarning,
            stacklevel=2,
        )
    factors = [
        cosine_iter_factor(g["lr"], total_iters=total, lr_min=lr_min, freeze_iters=freeze_iters)
        for g in optimizer.param_groups
    ]
    if lag:
        factors = [lagged_factor(f) for f in factors]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors), True
