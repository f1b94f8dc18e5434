"""Learning-rate schedules: the per-iteration cosine with a frozen start (SMoPE's CIFAR / ImageNet-R
scripts) as a function, inside a strategy (per group, per experience, SMoPE's warm-up cycle), and
the config errors."""

from __future__ import annotations

import math

import pytest
import torch
from avalanche.core import SupervisedPlugin
from cl_utils import make_benchmark, tiny_backbone

from avalanche_promptmoe import SequentialPromptStrategy, SMoPEStrategy
from avalanche_promptmoe.training.schedules import build_lr_scheduler, cosine_iter_factor


def test_cosine_iter_factor_freezes_then_anneals_to_lr_min():
    base, lr_min = 0.02, 1e-6
    f = cosine_iter_factor(base, total_iters=100, lr_min=lr_min, freeze_iters=20)
    lrs = [base * f(i) for i in range(101)]
    assert all(lr == pytest.approx(lr_min) for lr in lrs[:20])
    assert lrs[20] == pytest.approx(base)
    assert lrs[60] == pytest.approx(lr_min + (base - lr_min) / 2)  # half-way through the cosine
    assert lrs[100] == pytest.approx(lr_min)
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))  # non-increasing after the frozen start


def test_build_lr_scheduler_kinds_and_errors():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert build_lr_scheduler(opt, "constant", epochs=3) == (None, False)
    sched, per_iter = build_lr_scheduler(opt, "cosine", epochs=3, lr_min=0.01)
    assert not per_iter and isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.eta_min == 0.01
    with pytest.raises(ValueError, match="iterations per epoch"):
        build_lr_scheduler(opt, "cosine_iter", epochs=3)
    with pytest.raises(ValueError, match="expected one of"):
        build_lr_scheduler(opt, "exponential", epochs=3)
    with pytest.warns(RuntimeWarning, match="covers the whole phase"):
        build_lr_scheduler(opt, "cosine_iter", epochs=1, iters_per_epoch=4, freeze_iters=4)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(lr_schedule="cosine", lr_freeze_iters=5), "only the 'cosine_iter' schedule"),
        (dict(lr_min=0.5), r"lr_min: must be in \[0, lr"),
        (dict(lr_schedule="cosine_iter", lr_freeze_iters=-1), "lr_freeze_iters: must be >= 0"),
        (dict(lr_schedule="cosine_steps"), r"lr_schedule: expected .*'cosine_steps'"),
    ],
)
def test_bad_schedule_settings_name_the_setting(settings, match):
    with pytest.raises(ValueError, match=match):
        SequentialPromptStrategy(backbone=tiny_backbone(), num_classes=6, device="cpu", loggers=[], **settings)


class LrRecorder(SupervisedPlugin):
    """The learning rate of each group at every training iteration, before the step."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[tuple[int, tuple[float, ...]]] = []

    def before_training_iteration(self, strategy, **kwargs):
        self.lrs.append((strategy.task_id, tuple(g["lr"] for g in strategy.optimizer.param_groups)))


def test_strategy_follows_the_per_iteration_cosine_for_every_group_and_experience():
    bm = make_benchmark()  # 2 classes x 16 images per experience: 2 iterations per epoch at batch 16
    rec = LrRecorder()
    lr, scale, lr_min, freeze, epochs = 0.02, 0.25, 1e-6, 3, 4
    s = SequentialPromptStrategy(
        backbone=tiny_backbone(), num_classes=6, train_mb_size=16, train_epochs=epochs, device="cpu", loggers=[],
        progress=False, layers=(0, 1), length=4, lr=lr, head_lr_scale=scale, lr_schedule="cosine_iter",
        lr_min=lr_min, lr_freeze_iters=freeze, plugins=[rec],
    )
    for exp in bm.train_stream[:2]:
        s.train(exp, eval_streams=[])
    total = epochs * 2
    for task in (0, 1):  # a fresh schedule with each experience's fresh optimizer
        seen = [g for t, g in rec.lrs if t == task]
        assert len(seen) == total
        for base, got in zip((lr, lr * scale), zip(*seen)):  # prompt group, head group
            expected = [base * cosine_iter_factor(base, total_iters=total, lr_min=lr_min, freeze_iters=freeze)(i)
                        for i in range(total)]
            assert got == pytest.approx(expected, rel=1e-6)
            assert got[freeze] == pytest.approx(base) and got[-1] < base * 0.2


def test_per_epoch_cosine_is_constant_within_an_epoch():
    bm = make_benchmark()
    rec = LrRecorder()
    s = SequentialPromptStrategy(
        backbone=tiny_backbone(), num_classes=6, train_mb_size=16, train_epochs=2, device="cpu", loggers=[],
        progress=False, layers=(0, 1), length=4, lr=0.02, lr_schedule="cosine", plugins=[rec],
    )
    s.train(bm.train_stream[0], eval_streams=[])
    prompt_lrs = [g[0] for _, g in rec.lrs]
    assert prompt_lrs == pytest.approx([0.02, 0.02, 0.01, 0.01])  # cos(π/2) half-way at epoch 2


def test_smope_warmup_has_its_own_per_iteration_cycle():
    bm = make_benchmark()
    rec = LrRecorder()
    s = SMoPEStrategy(
        backbone=tiny_backbone(), num_classes=6, train_mb_size=16, train_epochs=2, device="cpu", loggers=[],
        progress=False, layers=(0, 1), num_experts=6, top_k=2, lr=0.03, tap_epochs=1, samples_per_class=4,
        lr_schedule="cosine_iter", lr_min=1e-6, lr_freeze_iters=1, plugins=[rec],
    )
    s.train(bm.train_stream[0], eval_streams=[])
    prompt_lrs = [g[0] for _, g in rec.lrs]
    # dense warm-up: 1 epoch = 2 iterations (frozen, then the top of its cosine); sparse: 2 epochs = 4
    assert len(prompt_lrs) == 6
    assert prompt_lrs[0] == pytest.approx(1e-6) and prompt_lrs[1] == pytest.approx(0.03)
    assert prompt_lrs[2] == pytest.approx(1e-6) and prompt_lrs[3] == pytest.approx(0.03)
    assert prompt_lrs[5] == pytest.approx(1e-6 + (0.03 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
