"""Method configs: frozen dataclasses with the papers' defaults, validated on construction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from .validation import check_config_values

__all__ = ["LRSchedule", "MethodConfig", "OptimizerName", "Recipe", "config_fields", "replace_config"]

#: The enumerations every config shares, named once so that a subclass re-declaring a default
#: cannot drift from the base (the generic validation reads them from the annotations).
OptimizerName = Literal["adam", "adamw", "sgd"]
LRSchedule = Literal["constant", "cosine", "cosine_iter", "step", "cosine_timm"]
#: ``"ours"``: the project's reading (documented per item in docs/methods.md); ``"official"``: what the
#: official code does, measured against its recorded outputs (../shared/data/conformance).
Recipe = Literal["ours", "official"]


@dataclass(frozen=True)
class MethodConfig:
    """Settings every method shares.

    Attributes:
        epochs: main prompt-training epochs per experience (``train_epochs`` overrides it).
        lr: learning rate of the prompt parameters (routers included).
        head_lr_scale: the head's learning rate is ``lr * head_lr_scale``.
        optimizer: ``"adam"`` (β = 0.9, 0.999), ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        weight_decay: optimizer weight decay.
        lr_schedule: ``"constant"``, ``"cosine"`` (per epoch, over ``epochs``), ``"cosine_iter"``
            (per iteration, after ``lr_freeze_iters`` iterations at ``lr_min``) or ``"step"`` (×
            ``lr_step_gamma`` every ``lr_step_epochs`` epochs, as HiDe's loop drives timm's step
            scheduler; training/schedules.py) or ``"cosine_timm"`` (the per-epoch cosine as HiDe's loop
            drives timm's ``CosineLRScheduler``: one epoch late).
        lr_min: the cosine's final learning rate (and the frozen start's).
        lr_freeze_iters: iterations at ``lr_min`` before the per-iteration cosine starts.
        clip_grad: max gradient norm (``None``: no clipping).
        lr_step_epochs: the ``"step"`` schedule's decay interval in epochs (HiDe ``--decay-epochs`` 30).
        lr_step_gamma: the ``"step"`` schedule's decay factor (HiDe ``--decay-rate`` 0.1).
        recipe: ``"ours"`` (default) or ``"official"``: one switch that makes a method behave as its
            official code where that code exists (docs/methods.md "Conformance" lists, per method,
            every behaviour it switches). A config whose class sets ``HAS_OFFICIAL_RECIPE = False``
            (methods without official code) refuses ``"official"``.

    Class attributes (unions over the MRO, so a subclass lists only its own fields):
        STRUCTURAL: fields that shape the model (layers, experts, lengths...); a checkpoint made with
            other values is refused by ``resume_from``. Unlisted fields may change on resume (logged).
        POSITIVE: numeric fields that must be ``> 0`` (every number is checked finite and ``>= 0``).
        SIGNED: numeric fields that may be negative.

    Every value is checked at construction against its annotation (``Literal`` choices, types,
    finite numbers, ranges): :func:`~avalanche_promptmoe.training.validation.check_config_values`.
    """

    STRUCTURAL: ClassVar[frozenset[str]] = frozenset()
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"epochs", "lr"})
    SIGNED: ClassVar[frozenset[str]] = frozenset()
    #: Whether ``recipe="official"`` means something for this method (its official code exists).
    HAS_OFFICIAL_RECIPE: ClassVar[bool] = False

    epochs: int = 20
    lr: float = 0.01
    head_lr_scale: float = 1.0
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    lr_schedule: LRSchedule = "constant"
    clip_grad: float | None = None
    lr_min: float = 0.0
    lr_freeze_iters: int = 0
    lr_step_epochs: int = 30
    lr_step_gamma: float = 0.1
    recipe: Recipe = "ours"

    def __post_init__(self) -> None:
        check_config_values(self)
        if self.recipe == "official" and not self.HAS_OFFICIAL_RECIPE:
            raise ValueError(f"recipe: {type(self).__name__} has no official code to reproduce; use recipe='ours'")
        if self.epochs < 1:
            raise ValueError(f"epochs: must be >= 1, got {self.epochs}")
        if self.lr <= 0 or self.head_lr_scale < 0:
            raise ValueError(f"lr: must be > 0 (head_lr_scale >= 0), got lr={self.lr}, head_lr_scale={self.head_lr_scale}")
        if not 0 <= self.lr_min < self.lr:
            raise ValueError(f"lr_min: must be in [0, lr={self.lr}), got {self.lr_min}")
        if self.lr_freeze_iters < 0:
            raise ValueError(f"lr_freeze_iters: must be >= 0, got {self.lr_freeze_iters}")
        if self.lr_freeze_iters and self.lr_schedule != "cosine_iter":
            raise ValueError(f"lr_freeze_iters: only the 'cosine_iter' schedule has a frozen start, got "
                             f"lr_schedule={self.lr_schedule!r}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad: must be > 0 or None, got {self.clip_grad}")
        if self.lr_step_epochs < 1:
            raise ValueError(f"lr_step_epochs: must be >= 1, got {self.lr_step_epochs}")
        if not 0 < self.lr_step_gamma <= 1:
            raise ValueError(f"lr_step_gamma: must be in (0, 1], got {self.lr_step_gamma}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def config_fields(cls: type[MethodConfig]) -> list[str]:
    return [f.name for f in fields(cls)]


def replace_config(cfg: MethodConfig, overrides: Mapping[str, Any]) -> MethodConfig:
    """``dataclasses.replace`` that names unknown keys and coerces lists to tuples."""
    known = set(config_fields(type(cfg)))
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{type(cfg).__name__}: unknown settings {unknown}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(cfg, **values)
