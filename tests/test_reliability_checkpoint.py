"""Issue #13 items 2–3: checkpoints verify themselves (digest, complete payload, no partial restore,
explicit migration of the old layout) and non-structural settings may change on resume."""

from __future__ import annotations

import logging

import pytest
import torch
from cl_utils import make_benchmark, tiny_backbone

from avalanche_promptmoe import SequentialPromptStrategy
from avalanche_promptmoe.training.checkpointing.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint_file,
    migrate_checkpoint_file,
    save_checkpoint_file,
)

COMMON = dict(num_classes=6, train_mb_size=16, train_epochs=2, device="cpu", loggers=[], progress=False,
              layers=(0, 1), length=4, lr=0.01)


def make(**kw):
    return SequentialPromptStrategy(backbone=tiny_backbone(), seed=0, **{**COMMON, **kw})


@pytest.fixture(scope="module")
def bench():
    return make_benchmark()


@pytest.fixture
def trained_ckpt(bench, tmp_path):
    s = make()
    s.train(bench.train_stream[0], eval_streams=[])
    return s.save_checkpoint(tmp_path / "after0.pt")


def _payload(path):
    state = load_checkpoint_file(path)
    for key in ("format", "version", "library_version", "digest"):
        state.pop(key)
    return state


def _snapshot(s):
    return (s.trained_experiences, list(s.task_classes), {k: v.clone() for k, v in s.model.state_dict().items()
                                                         if not k.startswith("vit.")}, torch.get_rng_state())


def _unchanged(s, snap):
    n, tasks, model, rng = snap
    now = {k: v for k, v in s.model.state_dict().items() if not k.startswith("vit.")}
    return (s.trained_experiences == n and s.task_classes == tasks and now.keys() == model.keys()
            and all(torch.equal(model[k], now[k]) for k in model) and torch.equal(rng, torch.get_rng_state()))


@pytest.mark.parametrize("damage", ["flip64", "truncate", "garbage"])
def test_corruption_is_a_checkpoint_error_naming_the_file(trained_ckpt, damage):
    data = bytearray(trained_ckpt.read_bytes())
    if damage == "flip64":  # 64 flipped bytes in the middle: torch itself does not notice these
        mid = len(data) // 2
        for i in range(mid, mid + 64):
            data[i] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) * 3 // 4]
    else:
        data = bytearray(b"\x00garbage" * 100)
    trained_ckpt.write_bytes(bytes(data))
    s = make()
    snap = _snapshot(s)
    with pytest.raises(CheckpointError, match=str(trained_ckpt.name)):
        s.resume_from(trained_ckpt)
    assert _unchanged(s, snap)


@pytest.mark.parametrize("key", ["rng", "model_structure", "task_classes", "generator"])
def test_incomplete_checkpoint_is_refused_before_any_state_changes(trained_ckpt, key):
    state = _payload(trained_ckpt)
    del state[key]
    save_checkpoint_file(trained_ckpt, state)
    s = make()
    snap = _snapshot(s)
    with pytest.raises(CheckpointError, match=rf"'{key}' is missing"):
        s.resume_from(trained_ckpt)
    assert _unchanged(s, snap)


def test_state_that_does_not_fit_leaves_the_strategy_untouched(trained_ckpt):
    state = _payload(trained_ckpt)
    name = next(k for k in state["model_state"] if k.startswith("head."))
    state["model_state"][name] = torch.zeros(3, 3)
    save_checkpoint_file(trained_ckpt, state)
    s = make()
    snap = _snapshot(s)
    with pytest.raises(ValueError, match="does not fit the model"):
        s.resume_from(trained_ckpt)
    assert _unchanged(s, snap)


def test_version_1_layout_is_refused_then_migrated_explicitly(trained_ckpt, bench):
    old = trained_ckpt.with_name("v1.pt")
    torch.save({**_payload(trained_ckpt), "format": CHECKPOINT_FORMAT, "version": 1, "library_version": "0.1"}, old)
    with pytest.raises(CheckpointError, match=rf"version 1 .*reads version {CHECKPOINT_VERSION}.*migrate_checkpoint_file"):
        make().resume_from(old)
    migrate_checkpoint_file(old)
    s = make()
    assert s.resume_from(old) == 1
    s.train(bench.train_stream[1], eval_streams=[])
    assert s.trained_experiences == 2


def test_non_structural_settings_may_change_on_resume(trained_ckpt, caplog):
    s = make(lr=0.02, train_epochs=1, optimizer="sgd")
    with caplog.at_level(logging.WARNING):
        assert s.resume_from(trained_ckpt) == 1
    assert s.resume_overrides == {"lr": (0.01, 0.02), "optimizer": ("adamw", "sgd")}
    assert "lr: 0.01 -> 0.02" in caplog.text and "optimizer: 'adamw' -> 'sgd'" in caplog.text


def test_structural_settings_are_refused_with_the_list(trained_ckpt):
    s = make(layers=(0,), length=2)
    snap = _snapshot(s)
    with pytest.raises(ValueError, match=r"structural settings \(layers: \[0, 1\] -> \[0\], length: 4 -> 2\)"):
        s.resume_from(trained_ckpt)
    assert _unchanged(s, snap)


def test_nan_stop_advice_can_be_followed(bench, tmp_path):
    """A huge lr blows up; rebuilt with a sane lr, resume_from(the advised path) continues training."""
    first = make(lr=0.01)
    first.train(bench.train_stream[0], eval_streams=[])
    after0 = first.save_checkpoint(tmp_path / "after0.pt")
    s = make(lr=1e30, checkpoint_dir=tmp_path)
    assert s.resume_from(after0) == 1
    assert s.resume_overrides == {"lr": (0.01, 1e30)}
    with pytest.raises(FloatingPointError) as err:  # Adam steps of 1e30 overflow within the experience
        s.train(bench.train_stream[1], eval_streams=[])
    path = tmp_path / "nan_stop_experience1.pt"
    assert f"resume_from({str(path)!r})" in str(err.value)
    fixed = make(lr=0.01, checkpoint_dir=tmp_path)
    assert fixed.resume_from(path) == 1
    assert fixed.resume_overrides == {"lr": (1e30, 0.01)}  # the NaN stop saved the huge lr's settings
    for exp in bench.train_stream[1:]:
        fixed.train(exp, eval_streams=[])
    assert fixed.trained_experiences == 3
    assert all(torch.isfinite(p).all() for p in fixed.model.parameters() if p.requires_grad)
