"""Issue #22 items 1–3: no lost work. An interrupted experience leaves the pre-experience state
(checkpoints then continue with that experience), seeds are checked on resume, and a non-finite
state is never written as a resume point."""

from __future__ import annotations

import logging

import pytest
import torch
from avalanche.core import SupervisedPlugin
from cl_utils import make_benchmark, tiny_backbone

from avalanche_promptmoe import HashPromptStrategy, SequentialPromptStrategy
from avalanche_promptmoe.training.checkpoint import load_checkpoint_file

COMMON = dict(num_classes=6, train_mb_size=8, train_epochs=1, device="cpu", loggers=[], progress=False,
              layers=(0,), length=2, lr=0.01)


def make(seed: int = 0, plugins=(), cls=SequentialPromptStrategy, **kw):
    return cls(backbone=tiny_backbone(), seed=seed, plugins=list(plugins), **{**COMMON, **kw})


@pytest.fixture(scope="module")
def bench():
    return make_benchmark(n_exp=3, per_class=8, test_per_class=2)


def _trainable(s):
    return {k: v.clone() for k, v in s.model.state_dict().items() if not k.startswith("vit.")}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Interrupt(SupervisedPlugin):
    """Raises ``error`` at the given iteration of experience ``at_exp`` (once)."""

    checkpoint_stateless = True

    def __init__(self, at_exp: int, error: BaseException, iteration: int = 1) -> None:
        super().__init__()
        self.at_exp, self.error, self.iteration, self.calls = at_exp, error, iteration, 0

    def after_training_iteration(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == self.at_exp:
            self.calls += 1
            if self.calls == self.iteration:  # the first update of the experience was made
                raise self.error


class PoisonAfterLastUpdate(SupervisedPlugin):
    """Writes NaN into a trainable tensor after the last update of experience ``at_exp`` (the
    training loss stays finite: the state diverged on the very last step)."""

    checkpoint_stateless = True

    def __init__(self, at_exp: int) -> None:
        super().__init__()
        self.at_exp = at_exp

    def after_training_epoch(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == self.at_exp:
            with torch.no_grad():
                next(p for p in strategy.model.parameters() if p.requires_grad).view(-1)[0] = float("nan")


# --------------------------------------------------------------------------- 1. interrupted experiences
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("disk gone")], ids=["ctrl-c", "exception"])
def test_an_interrupted_experience_leaves_the_pre_experience_state(bench, tmp_path, caplog, error):
    stop = Interrupt(at_exp=1, error=error)
    s = make(plugins=[stop])
    s.train(bench.train_stream[0], eval_streams=[])
    after0 = _trainable(s)
    with pytest.raises(type(error)):
        s.train(bench.train_stream[1], eval_streams=[])
    assert s.trained_experiences == 1 and s.task_classes == [[0, 1]] and sorted(s.class_to_task) == [0, 1]
    assert _same(_trainable(s), after0)  # the half-trained experience is gone
    with caplog.at_level(logging.WARNING):
        path = s.save_checkpoint(tmp_path / "ck.pt")
    assert "interrupted" in caplog.text and "experience 1" in caplog.text  # save_checkpoint says so
    state = load_checkpoint_file(path)
    assert state["trained_experiences"] == 1 and state["task_classes"] == [[0, 1]]
    assert make().resume_from(path) == 1  # resume continues with the interrupted experience
    s.train(bench.train_stream[1], eval_streams=[])  # the retry works ("already trained" before)
    assert s.trained_experiences == 2 and s.task_classes == [[0, 1], [2, 3]]


def test_an_interrupt_in_the_first_experience_of_a_routed_method(bench):
    """Per-task parameters created in prepare_task (Hash routers) are dropped again."""
    kw = dict(cls=HashPromptStrategy, num_experts=4, tii_epochs=0, tii_replay_epochs=0, tap_epochs=0)
    s = make(plugins=[Interrupt(at_exp=0, error=KeyboardInterrupt())], **kw)
    before = _trainable(s)
    with pytest.raises(KeyboardInterrupt):
        s.train(bench.train_stream[0], eval_streams=[])
    assert s.trained_experiences == 0 and s.task_classes == [] and s.model.num_tasks == 0
    assert _same(_trainable(s), before)
    s.train(bench.train_stream[0], eval_streams=[])
    assert s.model.num_tasks == 1 and s.trained_experiences == 1


# --------------------------------------------------------------------------- 2. seeds on resume
def test_resume_with_another_seed_is_refused_naming_both(bench, tmp_path):
    s = make(seed=3)
    s.train(bench.train_stream[0], eval_streams=[])
    path = s.save_checkpoint(tmp_path / "seed3.pt")
    other = make(seed=0)
    with pytest.raises(ValueError, match=r"seed=3.*seed=0.*allow_seed_change=True"):
        other.resume_from(path)
    assert other.trained_experiences == 0  # nothing restored
    assert other.resume_from(path, allow_seed_change=True) == 1
    assert other.resume_overrides["seed"] == (3, 0) and other.seed == 0


def test_resume_into_a_strategy_that_already_trained(bench, tmp_path):
    s = make()
    s.train(bench.train_stream[0], eval_streams=[])
    path = s.save_checkpoint(tmp_path / "a.pt")
    assert s.resume_from(path) == 1  # right after train(): it fits (no deepcopy error)
    s.train(bench.train_stream[1], eval_streams=[])
    kw = dict(cls=HashPromptStrategy, num_experts=4, tii_epochs=0, tii_replay_epochs=0, tap_epochs=0)
    h = make(**kw)
    h.train(bench.train_stream[0], eval_streams=[])
    early = h.save_checkpoint(tmp_path / "h.pt")
    h.train(bench.train_stream[1], eval_streams=[])
    with pytest.raises(ValueError, match=r"already trained 2 experiences.*resume into a fresh strategy"):
        h.resume_from(early)


# --------------------------------------------------------------------------- 3. finite state
def test_a_state_that_diverged_on_the_last_step_is_stopped_at_the_end_of_the_experience(bench, tmp_path):
    s = make(plugins=[PoisonAfterLastUpdate(at_exp=1)], checkpoint_dir=tmp_path)
    s.train(bench.train_stream[0], eval_streams=[])
    good = s.save_checkpoint(tmp_path / "good.pt")
    with pytest.raises(FloatingPointError, match=r"non-finite .*experience 1") as err:
        s.train(bench.train_stream[1], eval_streams=[])
    message = str(err.value)
    assert "good.pt" in message or "nan_stop_experience1.pt" in message  # names a finite resume point
    assert s.trained_experiences == 1  # the diverged experience does not count
    written = next(iter(sorted(tmp_path.glob("nan_stop_*.pt"))), None)
    assert written is not None
    state = load_checkpoint_file(written)
    assert all(bool(torch.isfinite(v).all()) for v in state["model_state"].values() if v.is_floating_point())
    assert make().resume_from(written) == 1
    assert good.is_file()


def test_a_non_finite_state_is_never_written(bench, tmp_path):
    s = make()
    s.train(bench.train_stream[0], eval_streams=[])
    path = s.save_checkpoint(tmp_path / "last.pt")
    before = path.read_bytes()
    with torch.no_grad():
        next(p for p in s.model.parameters() if p.requires_grad).view(-1)[0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"non-finite.*not written"):
        s.save_checkpoint(path)
    assert path.read_bytes() == before  # the last good checkpoint is kept


def test_the_nan_stop_says_restart_when_no_finite_state_exists(bench, tmp_path):
    s = make(plugins=[PoisonAfterLastUpdate(at_exp=0)], checkpoint_dir=tmp_path)
    with torch.no_grad():  # a state that was never finite: nothing to resume from
        next(p for p in s.model.parameters() if p.requires_grad).view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"no finite state.*restart"):
        s.train(bench.train_stream[0], eval_streams=[])
    assert not list(tmp_path.glob("*.pt"))


# --------------------------------------------------------------------------- the runner
def _kit_run(tmp_path, *extra):
    import runpy
    import sys
    from pathlib import Path

    exp = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(exp))
    import runner

    spec = runpy.run_path(str(exp / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]
    args = ["--method", "linear", "--device", "cpu", "--no-mlflow", "--run-dir", str(tmp_path / "run"),
            "--set", "benchmark.train_per_class=2", "--set", "benchmark.test_per_class=2",
            "--set", "benchmark.n_experiences=4", "--set", "method.epochs=1", *extra]
    return runner, spec, args


def test_the_runner_on_ctrl_c_keeps_a_checkpoint_that_resumes_the_interrupted_experience(tmp_path, monkeypatch):
    runner, spec, args = _kit_run(tmp_path)

    class StopInExperience1(runner.RunClock):
        def after_training_iteration(self, strategy, **kwargs):
            if strategy.clock.train_exp_counter == 1:
                raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner, "RunClock", StopInExperience1)
        with pytest.raises(KeyboardInterrupt):
            runner.run(spec, args)
    state = load_checkpoint_file(tmp_path / "run" / "last.pt")
    assert state["trained_experiences"] == 1 and len(state["task_classes"]) == 1
    summary = runner.run(spec, [*args, "--resume"])
    assert summary["resumed_from"] == 1 and len(summary["accuracy_matrix"]) == 4


def test_the_runner_refuses_resume_with_another_seed_unless_allowed(tmp_path):
    runner, spec, args = _kit_run(tmp_path, "--seed", "0")
    first = runner.run(spec, args)
    assert first["seed"] == 0
    again = [*args[:-1], "23", "--resume"]
    with pytest.raises(ValueError, match=r"seed=0.*seed=23"):
        runner.run(spec, again)
    summary = runner.run(spec, [*again, "--allow-seed-change"])  # finished run: nothing left to train
    assert summary["seed_override"] == {"checkpoint": 0, "now": 23} and summary["resumed_from"] == 4
