"""Issue #13 item 4: config values are checked at construction (generically, from type hints)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from cl_utils import tiny_backbone

from avalanche_promptmoe import HashPromptStrategy, SequentialPromptStrategy
from avalanche_promptmoe.methods.baselines.config import (
    HiDeBaselineConfig,
    JointPromptConfig,
    LinearProbeConfig,
    SequentialPromptConfig,
)
from avalanche_promptmoe.methods.hash.config import HashConfig
from avalanche_promptmoe.methods.hlgp.config import HLGPConfig
from avalanche_promptmoe.methods.smope.config import SMoPEConfig
from avalanche_promptmoe.training.config import MethodConfig

ALL = [MethodConfig, HashConfig, SMoPEConfig, HLGPConfig, LinearProbeConfig, SequentialPromptConfig,
       JointPromptConfig, HiDeBaselineConfig]


@pytest.mark.parametrize("cls, field, value, message", [
    (HashConfig, "tap_optimizer", "sgdd", r"tap_optimizer: expected sgd or adamw, got 'sgdd'"),
    (SMoPEConfig, "tap_optimizer", "adam ", r"tap_optimizer: expected sgd or adamw, got 'adam '"),
    (HashConfig, "delta", float("nan"), r"delta: must be finite; got nan"),
    (SMoPEConfig, "epsilon", float("inf"), r"epsilon: must be finite"),
    (HashConfig, "lr", float("nan"), r"lr: must be finite"),
    (LinearProbeConfig, "optimizer", "Adam", r"optimizer: expected adam, adamw or sgd, got 'Adam'"),
    (SequentialPromptConfig, "lr_schedule", "cos", r"lr_schedule: expected constant, cosine, cosine_iter, step or cosine_timm, got 'cos'"),
    (SequentialPromptConfig, "prompt_init", "uniform", r"prompt_init: expected uniform_pm1, uniform01, normal or zeros, got 'uniform'"),
    (HiDeBaselineConfig, "phases", ("tii", "wpt"), r"phases: item 1 \('wpt'\)"),
    (HashConfig, "epochs", 2.5, r"epochs: expected an int"),
    (HashConfig, "samples_per_class", True, r"samples_per_class: expected an int, got bool"),
    (HashConfig, "layers", (0, -1), r"layers: item 1 \(-1\): must be >= 0"),
    (HashConfig, "tap_lr", 0.0, r"tap_lr: must be > 0"),
    (HashConfig, "clip_grad", float("nan"), r"clip_grad: must be finite"),
    (HLGPConfig, "share_kv_adapter", "yes", r"share_kv_adapter: expected a bool"),
    (JointPromptConfig, "restart", 1, r"restart: expected a bool"),
])
def test_bad_values_are_refused_at_construction_naming_the_field(cls, field, value, message):
    with pytest.raises(ValueError, match=message):
        cls(**{field: value})


ENUMERATED = {"optimizer", "tap_optimizer", "lr_schedule", "prompt_init", "pie", "matching"}


@pytest.mark.parametrize("cls", ALL)
def test_every_enumerated_string_field_is_a_literal(cls):
    """Every enumerated setting lists its choices (subclasses that re-declare it included)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    plain = sorted(n for n in names & ENUMERATED if typing.get_origin(hints[n]) is not typing.Literal)
    assert plain == []
    if "phases" in names:
        assert typing.get_origin(typing.get_args(hints["phases"])[0]) is typing.Literal
    cls()  # the defaults themselves pass


@pytest.mark.parametrize("cls", ALL)
def test_a_redeclared_field_keeps_its_parents_choices(cls):
    """A subclass that re-declares a default keeps the base class's choices (no drift: ``"step"`` is
    a schedule of every method)."""
    hints = typing.get_type_hints(cls)
    for base in cls.__mro__[1:]:
        if not dataclasses.is_dataclass(base):
            continue
        base_hints = typing.get_type_hints(base)
        for name in ENUMERATED & {f.name for f in dataclasses.fields(base)}:
            assert set(typing.get_args(hints[name])) == set(typing.get_args(base_hints[name])), (cls, base, name)
    if "lr_schedule" in hints:
        cls(lr_schedule="step")


def test_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match=r"eval_mb_size: must be an int >= 1 or None, got 0"):
        SequentialPromptStrategy(backbone=tiny_backbone(), num_classes=6, eval_mb_size=0, loggers=[])
    with pytest.raises(ValueError, match=r"train_mb_size: must be an int >= 1, got 0"):
        SequentialPromptStrategy(backbone=tiny_backbone(), num_classes=6, train_mb_size=0, loggers=[])
    with pytest.raises(ValueError, match=r"train_epochs: must be an int >= 1 or None, got 0"):
        SequentialPromptStrategy(backbone=tiny_backbone(), num_classes=6, train_epochs=0, loggers=[])
    with pytest.raises(ValueError, match=r"tap_optimizer: expected sgd or adamw, got 'sgdd'"):
        HashPromptStrategy(backbone=tiny_backbone(), num_classes=6, tap_optimizer="sgdd", loggers=[])
    with pytest.raises(ValueError, match=r"delta: must be finite"):
        HashPromptStrategy(backbone=tiny_backbone(), num_classes=6, delta=float("nan"), loggers=[])
