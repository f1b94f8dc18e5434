"""Issue 14 item 1: rehearsal plugins (ReplayPlugin) help, with a sane loss, and stock plugins' state
survives save_checkpoint / resume_from or is refused by name — never silently dropped."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import (
    EarlyStoppingPlugin,
    EvaluationPlugin,
    EWCPlugin,
    LwFPlugin,
    ReplayPlugin,
)
from avalanche.training.storage_policy import ClassBalancedBuffer
from cl_utils import make_benchmark, tiny_backbone

from avalanche_promptmoe import LinearProbeStrategy
from avalanche_promptmoe.training.checkpointing.plugin_state import PluginStateError
from avalanche_promptmoe.training.losses import training_class_mask


def _bench():
    return make_benchmark(n_exp=3, classes_per_exp=2, per_class=24, test_per_class=16, noise=1.0)


def _strategy(plugins=(), **kw):
    kw = {"train_epochs": 8, "lr": 0.02, **kw}
    return LinearProbeStrategy(
        backbone=tiny_backbone(), num_classes=6, train_mb_size=16, device="cpu", plugins=list(plugins),
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]), progress=False, **kw,
    )


def _train(strategy, experiences):
    losses = []
    original = strategy.backward

    def spy():
        losses.append(float(strategy.loss.detach()))
        original()

    strategy.backward = spy
    for exp in experiences:
        strategy.train(exp)
    strategy.backward = original
    return losses


def _stream_acc(strategy, stream) -> float:
    res = strategy.eval(stream)
    return next(v for k, v in res.items() if k.startswith("Top1_Acc_Stream/eval_phase/test"))


def test_replay_raises_accuracy_with_a_sane_loss():
    bench = _bench()
    plain = _strategy()
    _train(plain, bench.train_stream)
    replay = _strategy([ReplayPlugin(mem_size=48)])
    losses = _train(replay, bench.train_stream)
    acc_plain, acc_replay = _stream_acc(plain, bench.test_stream), _stream_acc(replay, bench.test_stream)
    # old-class samples in the batch compete over their own logits: a loss of a few units, not ~1e4
    assert max(losses) < 10, max(losses)
    assert acc_replay > acc_plain + 0.1, (acc_plain, acc_replay)


def test_training_mask_admits_the_batch_classes_only_beyond_the_experience():
    base = torch.zeros(6, dtype=torch.bool)
    base[[4, 5]] = True
    mask = training_class_mask(base, torch.tensor([4, 1, 5, 1]))
    assert mask.tolist() == [False, True, False, False, True, True]
    seen = torch.tensor([True] * 4 + [False] * 2)
    assert training_class_mask(base, torch.tensor([4]), seen).all()
    assert torch.equal(training_class_mask(base, torch.tensor([5, 4])), base)  # no rehearsal: unchanged


def test_lwf_sees_old_class_logits_in_training():
    bench = make_benchmark(n_exp=2, classes_per_exp=2, per_class=16, task_labels=True)  # LwF reads task labels
    s = _strategy([LwFPlugin(alpha=1.0)], train_epochs=1)
    old_rows = []

    class Spy(SupervisedPlugin):
        def after_forward(self, strategy, **kw):
            if strategy.trained_experiences == 1:
                old_rows.append(strategy.mb_output[:, [0, 1]].detach())

    s.plugins.append(Spy())
    _train(s, list(bench.train_stream)[:2])
    old = torch.cat(old_rows)
    assert old.abs().max() < 1e3  # distillation reads these logits: they are not masked to -1e4


def test_replay_buffer_survives_resume(tmp_path):
    bench = _bench()
    exps = list(bench.train_stream)
    plugin = ReplayPlugin(mem_size=12)
    s = _strategy([plugin], train_epochs=1)
    _train(s, exps[:2])
    before = plugin.storage_policy.buffer
    assert len(before) == 12
    s.save_checkpoint(tmp_path / "r.pt")

    fresh = ReplayPlugin(mem_size=12)
    s2 = _strategy([fresh], train_epochs=1)
    assert s2.resume_from(tmp_path / "r.pt") == 2
    after = fresh.storage_policy.buffer
    assert len(after) == 12
    xs_b = torch.stack([before.eval()[i][0] for i in range(12)])
    xs_a = torch.stack([after[i][0] for i in range(12)])
    assert torch.equal(xs_b, xs_a)
    assert [int(before[i][1]) for i in range(12)] == [int(after[i][1]) for i in range(12)]
    assert sorted(fresh.storage_policy.buffer_groups) == [0, 1]
    _train(s2, exps[2:])  # the restored buffer feeds the next experience
    assert len(fresh.storage_policy.buffer) == 12
    assert sorted({int(after[i][1]) for i in range(12)}) == [0, 1, 2, 3]


def test_class_balanced_buffer_survives_resume(tmp_path):
    bench = _bench()
    plugin = ReplayPlugin(mem_size=8, storage_policy=ClassBalancedBuffer(max_size=8))
    s = _strategy([plugin], train_epochs=1)
    _train(s, list(bench.train_stream)[:1])
    s.save_checkpoint(tmp_path / "c.pt")
    fresh = ReplayPlugin(mem_size=8, storage_policy=ClassBalancedBuffer(max_size=8))
    _strategy([fresh], train_epochs=1).resume_from(tmp_path / "c.pt")
    assert sorted(fresh.storage_policy.buffer_groups) == [0, 1]
    assert len(fresh.storage_policy.buffer) == 8 and fresh.storage_policy.seen_classes == {0, 1}


def test_unknown_stateful_plugin_is_refused_by_name(tmp_path):
    bench = _bench()
    ewc = EWCPlugin(ewc_lambda=1.0)
    s = _strategy([ewc, EarlyStoppingPlugin(patience=2, val_stream_name="test")], train_epochs=1)
    _train(s, list(bench.train_stream)[:1])
    with pytest.raises(PluginStateError, match="EWCPlugin.*checkpoint_stateless"):
        s.save_checkpoint(tmp_path / "e.pt")
    assert not (tmp_path / "e.pt").exists()
    class Probe(SupervisedPlugin):  # no instance attributes: nothing to keep
        def after_training_iteration(self, strategy, **kw):
            pass

    s.plugins.append(Probe())
    ewc.checkpoint_stateless = True  # the documented opt-out
    s.save_checkpoint(tmp_path / "e.pt")
    assert (tmp_path / "e.pt").exists()
