"""Issue 14 item 2: bring your own optimizer (factory), scheduler (factory) and criterion; Avalanche's
LRSchedulerPlugin is refused with a pointer to ``lr_scheduler=``."""

from __future__ import annotations

import functools

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import loss_metrics
from avalanche.training.plugins import EvaluationPlugin, LRSchedulerPlugin
from cl_utils import make_benchmark, tiny_backbone
from torch import nn

from avalanche_promptmoe import LinearProbeStrategy, SequentialPromptStrategy


class LrSpy(SupervisedPlugin):
    """Records the optimizer's learning rates at each epoch / iteration start, and the optimizers."""

    def __init__(self):
        super().__init__()
        self.epochs, self.iters, self.optimizers = [], [], []

    def before_training_exp(self, strategy, **kw):
        self.epochs.append([])

    def before_training_epoch(self, strategy, **kw):
        self.epochs[-1].append([g["lr"] for g in strategy.optimizer.param_groups])
        if strategy.optimizer not in self.optimizers:
            self.optimizers.append(strategy.optimizer)

    def before_training_iteration(self, strategy, **kw):
        self.iters.append(strategy.optimizer.param_groups[0]["lr"])


def _strategy(cls=LinearProbeStrategy, plugins=(), **kw):
    extra = {"layers": (0, 1)} if cls is SequentialPromptStrategy else {}
    kw.setdefault("evaluator", EvaluationPlugin(loggers=[]))
    kw.setdefault("train_epochs", 3)
    return cls(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, device="cpu",
               plugins=list(plugins), progress=False, lr=0.1, **extra, **kw)


def _bench():
    return make_benchmark(n_exp=2, classes_per_exp=2, per_class=8, test_per_class=4)


def test_optimizer_factory_is_called_per_experience_on_our_groups():
    calls = []

    def factory(params):
        calls.append([(g["name"], g["lr"], len(g["params"])) for g in params])
        return torch.optim.SGD(params, momentum=0.5)

    spy = LrSpy()
    s = _strategy(SequentialPromptStrategy, [spy], optimizer=factory, head_lr_scale=0.5)
    for exp in _bench().train_stream:
        s.train(exp)
    assert len(spy.optimizers) == 2 and len(calls) >= 2  # a fresh optimizer per experience
    assert all(isinstance(o, torch.optim.SGD) and o.defaults["momentum"] == 0.5 for o in spy.optimizers)
    assert [(n, lr) for n, lr, _ in calls[0]] == [("prompts", 0.1), ("head", 0.05)]  # per-group lrs
    assert s.cfg.optimizer == type(s.cfg)().optimizer  # the factory is not a config setting...
    assert "factory" in s.training_overrides["optimizer"]  # ...but is recorded for run logs


def test_partial_factory_and_its_parameters_move():
    s = _strategy(optimizer=functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=0.0))
    head0 = s.model.head.weight.detach().clone()
    s.train(_bench().train_stream[0])
    assert isinstance(s.optimizer, torch.optim.SGD) and s.optimizer.defaults["momentum"] == 0.9
    assert not torch.equal(head0, s.model.head.weight)


def test_optimizer_instance_or_bad_factory_is_refused():
    with pytest.raises(TypeError, match="factory"):
        _strategy(optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    s = _strategy(optimizer=lambda params: torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    with pytest.raises(ValueError, match="every trainable parameter"):
        s.train(_bench().train_stream[0])


def test_lr_scheduler_factory_steps_per_epoch_and_resets_per_experience():
    spy = LrSpy()
    s = _strategy(plugins=[spy], lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    for exp in _bench().train_stream:
        s.train(exp)
    expected = [[[0.1], [0.05], [0.025]]] * 2
    assert [[[round(v, 6) for v in e] for e in exp] for exp in spy.epochs] == expected


def test_lr_scheduler_factory_per_iteration():
    spy = LrSpy()
    s = _strategy(plugins=[spy], train_epochs=1, lr_scheduler_interval="iteration",
                  lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i)))
    s.train(_bench().train_stream[0])  # 16 samples, batch 8: two iterations
    assert [round(v, 6) for v in spy.iters] == [0.1, 0.05]


def test_scheduler_keyword_checks():
    with pytest.raises(ValueError, match="lr_schedule='constant'"):
        _strategy(lr_schedule="cosine", lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))
    with pytest.raises(ValueError, match="lr_scheduler_interval"):
        _strategy(lr_scheduler_interval="step")


def test_lr_scheduler_plugin_is_refused_with_the_alternative():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    plugin = LRSchedulerPlugin(torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))
    with pytest.raises(ValueError, match=r"LRSchedulerPlugin.*lr_scheduler=lambda opt"):
        _strategy(plugins=[plugin])


def test_user_criterion_gets_masked_training_and_unmasked_eval_logits():
    seen = {"train": [], "eval": []}

    class Recording(nn.CrossEntropyLoss):
        def forward(self, logits, target):
            own = logits.detach().gather(1, target.long()[:, None])  # the batch's own classes' logits
            seen["train" if torch.is_grad_enabled() else "eval"].append((float(logits.min()), float(own.min())))
            return super().forward(logits, target) * 2.0

    bench = _bench()
    s = _strategy(criterion=Recording(), evaluator=EvaluationPlugin(loss_metrics(stream=True), loggers=[]))
    s.train(bench.train_stream[0])
    res = s.eval(bench.test_stream)
    assert seen["train"] and min(m for m, _ in seen["train"]) <= -1e4  # the other experience's classes are masked
    # at evaluation, a target's own logit is never masked (untrained experiences included), so the
    # −1e4 of the prediction mask never reaches the loss
    assert len(seen["eval"]) == 2 and min(o for _, o in seen["eval"]) > -1e3
    loss_key = next(k for k in res if k.startswith("Loss_Stream"))
    assert 0 < res[loss_key] < 100


def test_bad_criterion_is_refused():
    with pytest.raises(TypeError, match="criterion: expected a callable"):
        _strategy(criterion="ce")
