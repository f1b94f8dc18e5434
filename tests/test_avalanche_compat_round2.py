"""Issue #21, items 4–5: GDumb and MAC_metrics are refused with a reason where they cannot work,
GDumb works where it can; JointPromptStrategy trains on a lazily built stream; EarlyStopping never
cuts SMoPE's dense warm-up short and ``epoch_modes`` lists only epochs that ran; a torch.compile'd
model saves and resumes like an uncompiled one."""

from __future__ import annotations

import pytest
import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLStream
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EarlyStoppingPlugin, GDumbPlugin
from cl_utils import make_benchmark
from strategy_kit import make_tiny_strategy


@pytest.mark.parametrize("name", ["hash", "hide", "hlgp"])
def test_gdumb_is_refused_on_models_that_grow_per_task(name):
    with pytest.raises(ValueError, match=r"GDumbPlugin cannot run on .*fewer tasks"):
        make_tiny_strategy(name, plugins=[GDumbPlugin(mem_size=20)])


def test_gdumb_trains_where_the_model_does_not_grow():
    bm = make_benchmark(n_exp=2)
    s = make_tiny_strategy("seq", plugins=[GDumbPlugin(mem_size=20)])
    for exp in bm.train_stream:
        s.train(exp, eval_streams=[])
    assert s.trained_experiences == 2 and s.seen_classes == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["hash", "seq"])
def test_mac_metrics_are_refused_with_the_reason(name):
    from avalanche.evaluation.metrics import MAC_metrics
    from avalanche.training.plugins import EvaluationPlugin

    evaluator = EvaluationPlugin(MAC_metrics(minibatch=True, epoch=True, experience=True), loggers=[])
    with pytest.raises(ValueError, match=r"MAC_metrics .* missing the prompts, routers and the query"):
        make_tiny_strategy(name, loggers=None, evaluator=evaluator)


def test_joint_trains_on_a_lazy_stream_as_on_a_list():
    bm = make_benchmark(n_exp=2)
    lazy = CLStream("train", (exp for exp in bm.train_stream))
    a = make_tiny_strategy("joint")
    for exp in lazy:
        a.train(exp, eval_streams=[])
    b = make_tiny_strategy("joint")  # built after a trained: construction seeds the global RNG
    for exp in bm.train_stream:
        b.train(exp, eval_streams=[])
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


class EpochCounter(SupervisedPlugin):
    def __init__(self) -> None:
        super().__init__()
        self.ran: list[bool] = []  # model.dense per epoch that ran

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self.ran.append(strategy.model.dense if hasattr(strategy.model, "dense") else False)


class StopRequester(SupervisedPlugin):
    """Asks to stop at the start of every epoch after the first, as EarlyStoppingPlugin does."""

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_epochs >= 1:
            strategy.stop_training()


def test_early_stopping_never_cuts_the_dense_warmup():
    bm = make_benchmark(n_exp=1)
    counter = EpochCounter()
    s = make_tiny_strategy("smope", plugins=[counter, StopRequester()], train_epochs=2, dense_warmup_fraction=1.5)
    s.train(bm.train_stream[0], eval_streams=[])
    assert counter.ran == [True, True, True], f"the 3-epoch warm-up was cut or the stop ignored: {counter.ran}"
    assert s.epoch_modes == [(0, "dense")] * 3, "epoch_modes lists the epochs that ran, no more"


def test_early_stopping_plugin_restarts_its_patience_after_the_warmup():
    s = make_tiny_strategy("smope", plugins=[EarlyStoppingPlugin(patience=1, val_stream_name="test")],
                           train_epochs=2, dense_warmup_fraction=0.5)
    stopper = next(p for p in s.plugins if isinstance(p, EarlyStoppingPlugin))
    stopper.best_val, stopper.best_step = 0.5, 3
    s._dense_epochs_left, s.model.dense = 1, True
    s._after_training_epoch()
    assert not s.model.dense and stopper.best_val is None and stopper.best_step is None


@pytest.mark.parametrize("target", ["compiled", "plain"])
def test_compiled_model_saves_and_resumes_like_an_uncompiled_one(tmp_path, target):
    bm = make_benchmark(n_exp=2)
    s = make_tiny_strategy("hash")
    s.model = torch.compile(s.model, backend="eager")
    s.train(bm.train_stream[0], eval_streams=[])
    path = s.save_checkpoint(tmp_path / "compiled.pt")
    plain = make_tiny_strategy("hash")
    plain.train(bm.train_stream[0], eval_streams=[])
    keys = set(s.state_dict_for_checkpoint()["model_state"])
    assert keys == set(plain.state_dict_for_checkpoint()["model_state"]), "no _orig_mod. keys, no backbone"
    t = make_tiny_strategy("hash")
    if target == "compiled":
        t.model = torch.compile(t.model, backend="eager")
    assert t.resume_from(path) == 1
    t.train(bm.train_stream[1], eval_streams=[])
    assert t.trained_experiences == 2
