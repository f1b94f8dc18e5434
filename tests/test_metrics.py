"""FAA / CAA / FFM on hand-computed matrices, input validation, and the Avalanche plugin metric."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from avalanche_promptmoe.metrics import (
    cumulative_average_accuracy,
    final_average_accuracy,
    final_forgetting,
    summarize,
    validate_accuracy_matrix,
)

NAN = float("nan")


# --------------------------------------------------------------------------- hand-computed cases
def test_three_by_three_by_hand() -> None:
    acc = np.array(
        [
            [0.9, NAN, NAN],
            [0.8, 0.7, NAN],
            [0.6, 0.5, 0.4],
        ]
    )
    # FAA = (0.6 + 0.5 + 0.4) / 3 = 1.5 / 3 = 0.5
    assert final_average_accuracy(acc) == pytest.approx(0.5)
    # CAA = (0.9 + (0.8 + 0.7) / 2 + (0.6 + 0.5 + 0.4) / 3) / 3 = (0.9 + 0.75 + 0.5) / 3 = 2.15 / 3
    assert cumulative_average_accuracy(acc) == pytest.approx(2.15 / 3)
    # FFM: task 0: max(0.9, 0.8) - 0.6 = 0.3; task 1: max(0.7) - 0.5 = 0.2; mean = 0.25
    assert final_forgetting(acc) == pytest.approx(0.25)
    assert summarize(acc) == pytest.approx({"faa": 0.5, "caa": 2.15 / 3, "ffm": 0.25, "ffm_hide": 0.25})


def test_future_columns_and_upper_triangle_are_ignored_and_forgetting_is_signed() -> None:
    # 3 trained rows, 4 task columns; upper-triangle / future entries hold values that must not count.
    acc = np.array(
        [
            [0.5, 0.1, 0.2, NAN],
            [0.4, 0.6, 0.3, 0.9],
            [0.7, 0.2, 0.8, 0.0],
        ]
    )
    # FAA = (0.7 + 0.2 + 0.8) / 3 = 1.7 / 3
    assert final_average_accuracy(acc) == pytest.approx(1.7 / 3)
    # CAA = (0.5 + (0.4 + 0.6) / 2 + 1.7 / 3) / 3 = (0.5 + 0.5 + 0.56667) / 3
    assert cumulative_average_accuracy(acc) == pytest.approx((0.5 + 0.5 + 1.7 / 3) / 3)
    # FFM: task 0: max(0.5, 0.4) - 0.7 = -0.2 (backward transfer, not clipped);
    #      task 1: max(0.6) - 0.2 = 0.4; mean = (-0.2 + 0.4) / 2 = 0.1
    assert final_forgetting(acc) == pytest.approx(0.1)


def test_one_by_one_by_hand() -> None:
    acc = [[0.8]]
    # FAA = 0.8 / 1; CAA = (0.8 / 1) / 1; FFM = 0.0 by definition (nothing to forget with T = 1)
    assert summarize(acc) == {"faa": pytest.approx(0.8), "caa": pytest.approx(0.8), "ffm": 0.0, "ffm_hide": 0.0}


def test_two_rows_torch_input() -> None:
    acc = torch.tensor([[1.0, 0.0], [0.5, 0.75]])
    # FAA = (0.5 + 0.75) / 2 = 0.625; CAA = (1.0 + 0.625) / 2 = 0.8125; FFM = (1.0 - 0.5) / 1 = 0.5
    assert summarize(acc) == pytest.approx({"faa": 0.625, "caa": 0.8125, "ffm": 0.5, "ffm_hide": 0.5})


@given(
    num_trained=st.integers(1, 6),
    extra_cols=st.integers(0, 3),
    value=st.floats(0.0, 1.0),
)
def test_constant_matrix_has_that_accuracy_and_no_forgetting(
    num_trained: int, extra_cols: int, value: float
) -> None:
    acc = np.full((num_trained, num_trained + extra_cols), value)
    out = summarize(acc)
    assert out["faa"] == pytest.approx(value)
    assert out["caa"] == pytest.approx(value)
    assert out["ffm"] == pytest.approx(0.0, abs=1e-12)


@given(data=st.data(), num_trained=st.integers(1, 6))
def test_metrics_match_loop_reference(data: st.DataObject, num_trained: int) -> None:
    values = data.draw(
        st.lists(st.floats(0.0, 1.0), min_size=num_trained * num_trained, max_size=num_trained * num_trained)
    )
    acc = np.array(values).reshape(num_trained, num_trained)
    last = num_trained - 1
    faa = sum(acc[last, i] for i in range(num_trained)) / num_trained
    caa = sum(sum(acc[t, i] for i in range(t + 1)) / (t + 1) for t in range(num_trained)) / num_trained
    drops = [max(acc[t, i] for t in range(i, last)) - acc[last, i] for i in range(last)]
    ffm = sum(drops) / len(drops) if drops else 0.0
    drops_hide = [max(acc[t, i] for t in range(i, last + 1)) - acc[last, i] for i in range(last)]
    ffm_hide = sum(drops_hide) / len(drops_hide) if drops_hide else 0.0
    assert summarize(acc) == pytest.approx({"faa": faa, "caa": caa, "ffm": ffm, "ffm_hide": ffm_hide})


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([0.5, 0.5]), "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.zeros((0, 3)), "at least one trained row"),
        (np.zeros((3, 2)), "fewer task columns"),
        (np.array([[90.0]]), r"A\[0, 0\] = 90.0 is outside \[0, 1\]"),
        (np.array([[0.5, NAN], [-0.1, 0.5]]), r"A\[1, 0\] = -0.1 is outside"),
        (np.array([[0.5, math.inf], [0.1, 0.5]]), r"A\[0, 1\] = inf is outside"),
        (np.array([[0.5, NAN, NAN], [0.5, 0.5, NAN], [0.5, NAN, 0.5]]), r"A\[2, 1\] is NaN but required"),
        (np.array([[NAN]]), r"A\[0, 0\] is NaN but required"),
    ],
)
def test_validation_errors(matrix: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(matrix)


def test_validation_rejects_non_numeric_and_returns_copy() -> None:
    with pytest.raises(TypeError, match="accuracy matrix"):
        validate_accuracy_matrix([["a"]])
    original = np.array([[0.5]], dtype=np.float32)
    checked = validate_accuracy_matrix(original)
    checked[0, 0] = 0.0
    assert original[0, 0] == 0.5 and checked.dtype == np.float64


def test_metrics_package_imports_without_avalanche() -> None:
    code = (
        "import sys; sys.modules['avalanche'] = None\n"
        "import avalanche_promptmoe.metrics as m\n"
        "assert m.final_average_accuracy([[0.5]]) == 0.5\n"
        "try:\n    m.TaskAveragedMetrics\nexcept ImportError:\n    print('lazy-ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lazy-ok"


# --------------------------------------------------------------------------- plugin, real Avalanche runs
NUM_CLASSES, DIM, NUM_EXP = 6, 8, 3


def _tensor_dataset(per_class: int, generator: torch.Generator) -> torch.utils.data.TensorDataset:
    y = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    x = 3.0 * torch.nn.functional.one_hot(y, DIM).float() + 0.7 * torch.randn(
        len(y), DIM, generator=generator
    )
    dataset = torch.utils.data.TensorDataset(x, y)
    dataset.targets = y.tolist()
    return dataset


def _benchmark(task_labels: bool):
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    gen = torch.Generator().manual_seed(0)
    train, test = _tensor_dataset(20, gen), _tensor_dataset(10, gen)
    if task_labels:  # legacy generator; each experience gets its own task label (Task000..Task002)
        return nc_benchmark(train, test, n_experiences=NUM_EXP, task_labels=True, seed=0)
    streams = {"train": as_classification_dataset(train), "test": as_classification_dataset(test)}
    return class_incremental_benchmark(streams, num_experiences=NUM_EXP, seed=0)


def _strategy(plugin, **kwargs):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), plugin, loggers=[])
    model = torch.nn.Linear(DIM, NUM_CLASSES)
    defaults = dict(train_mb_size=16, train_epochs=2, eval_mb_size=32, device="cpu")
    defaults.update(kwargs)
    return Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), evaluator=evaluator, **defaults
    )


def _avalanche_exp_accuracies(metrics: dict, stream: str, with_task: bool) -> dict[int, float]:
    """Top1_Acc_Exp per experience index, checking the TaskNNN part is there exactly when expected."""
    pattern = re.compile(rf"^Top1_Acc_Exp/eval_phase/{stream}_stream(/Task\d{{3}})?/Exp(\d{{3}})$")
    found = {}
    for key, value in metrics.items():
        match = pattern.match(key)
        if match:
            assert (match.group(1) is not None) == with_task, key
            found[int(match.group(2))] = float(value)
    return found


@pytest.fixture(scope="module")
def _avalanche_available() -> None:
    pytest.importorskip("avalanche")


@pytest.mark.usefixtures("_avalanche_available")
@pytest.mark.parametrize("task_labels", [True, False], ids=["task_labels", "no_task_labels"])
def test_plugin_matches_avalanche_experience_accuracy(task_labels: bool) -> None:
    from avalanche_promptmoe.metrics import task_averaged_metrics

    benchmark = _benchmark(task_labels)
    plugin = task_averaged_metrics()
    strategy = _strategy(plugin)

    before = strategy.eval(benchmark.test_stream)  # before any training: ignored by the plugin
    assert not any(k.startswith(("FAA/", "TaskAccMatrix/")) for k in before)
    assert plugin.accuracy_matrix.shape == (0, 0)

    expected_rows = []
    for t, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream)
        ava = _avalanche_exp_accuracies(metrics, "test", with_task=task_labels)
        assert sorted(ava) == list(range(NUM_EXP))
        expected_rows.append([ava[i] for i in range(NUM_EXP)])  # future tasks included
        expected = np.array(expected_rows)

        emitted = metrics["TaskAccMatrix/eval_phase/test_stream"]
        assert isinstance(emitted, torch.Tensor) and emitted.shape == (t + 1, NUM_EXP)
        np.testing.assert_allclose(emitted.numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(plugin.accuracy_matrix, expected, atol=1e-12)
        # FAA = mean of the last row over the tasks trained so far only (future columns excluded).
        assert metrics["FAA/eval_phase/test_stream"] == pytest.approx(expected[t, : t + 1].mean())
        assert metrics["CAA/eval_phase/test_stream"] == pytest.approx(cumulative_average_accuracy(expected))
        assert metrics["FFM/eval_phase/test_stream"] == pytest.approx(final_forgetting(expected))
        assert not any(
            "Task0" in k for k in metrics if k.split("/")[0] in {"FAA", "CAA", "FFM", "TaskAccMatrix"}
        )

    # Non-triviality: each task was learned, earlier ones were partly forgotten, and the unseen
    # future tasks (upper triangle) score low, so including them would have changed FAA.
    final = plugin.accuracy_matrix
    assert np.diag(final).min() > 0.8
    assert final_forgetting(final) > 0.0
    assert np.triu(final, k=1).max() < 0.5
    assert plugin.result() == pytest.approx(summarize(final))


@pytest.mark.usefixtures("_avalanche_available")
def test_plugin_overwrites_row_on_repeated_eval_and_keeps_untouched_entries() -> None:
    from avalanche_promptmoe.metrics import TaskAveragedMetrics

    benchmark = _benchmark(task_labels=False)
    plugin = TaskAveragedMetrics()
    strategy = _strategy(plugin)
    strategy.train(benchmark.train_stream[0])
    strategy.eval(benchmark.test_stream)
    first = plugin.accuracy_matrix

    with torch.no_grad():  # change the model without training: predictions become class 5 only
        strategy.model.weight.zero_()
        strategy.model.bias.copy_(torch.arange(NUM_CLASSES, dtype=torch.float32))
    metrics = strategy.eval(benchmark.test_stream[0:2])  # experiences 0 and 1 only
    second = plugin.accuracy_matrix
    ava = _avalanche_exp_accuracies(metrics, "test", with_task=False)

    assert second.shape == (1, NUM_EXP)
    assert second[0, 0] == pytest.approx(ava[0]) and second[0, 1] == pytest.approx(ava[1])
    assert second[0, 0] != pytest.approx(first[0, 0])  # the row really was overwritten
    assert second[0, 2] == first[0, 2]  # experience 2 not re-evaluated: kept
    assert metrics["FAA/eval_phase/test_stream"] == pytest.approx(ava[0])


@pytest.mark.usefixtures("_avalanche_available")
@pytest.mark.parametrize(
    ("eval_every", "epochs"),
    # (1, 2): evals before training and after each epoch, the last epoch's being the final one;
    # (2, 2): an eval after epoch 0 only, then the final one in after_training_exp (do_final).
    [(1, 2), (2, 2)],
)
def test_plugin_with_periodic_eval_fills_the_row_of_the_experience_in_training(
    eval_every: int, epochs: int
) -> None:
    from avalanche_promptmoe.metrics import TaskAveragedMetrics

    benchmark = _benchmark(task_labels=False)
    plugin = TaskAveragedMetrics()
    strategy = _strategy(plugin, eval_every=eval_every, train_epochs=epochs)
    rows = []
    for t, experience in enumerate(benchmark.train_stream):
        strategy.train(experience, eval_streams=[benchmark.test_stream])
        # The last values Avalanche logged come from the eval of the finished experience t.
        ava = _avalanche_exp_accuracies(strategy.evaluator.get_last_metrics(), "test", with_task=False)
        rows.append([ava[i] for i in range(NUM_EXP)])
        assert plugin.accuracy_matrix.shape == (t + 1, NUM_EXP)
        # Earlier rows were not touched by the evals run while later experiences trained.
        np.testing.assert_allclose(plugin.accuracy_matrix, np.array(rows), atol=1e-12)
    assert plugin.streams == ["test"]
    # A direct eval afterwards describes the same model: row 2 unchanged, no new row.
    strategy.eval(benchmark.test_stream)
    np.testing.assert_allclose(plugin.accuracy_matrix, np.array(rows), atol=1e-12)


@pytest.mark.usefixtures("_avalanche_available")
def test_plugin_state_dict_round_trip_through_checkpoint(tmp_path) -> None:
    from avalanche_promptmoe.metrics import TaskAveragedMetrics
    from avalanche_promptmoe.training.checkpointing.checkpoint import (
        load_checkpoint_file,
        save_checkpoint_file,
    )

    benchmark = _benchmark(task_labels=True)
    plugin = TaskAveragedMetrics()
    strategy = _strategy(plugin, train_epochs=1)
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
        strategy.eval(benchmark.train_stream[0:1])  # a second stream, with its own matrix

    path = save_checkpoint_file(tmp_path / "metric.ckpt", {"metric": plugin.state_dict()})
    restored = TaskAveragedMetrics()
    restored.load_state_dict(load_checkpoint_file(path)["metric"])

    assert restored.streams == ["test", "train"]
    for stream in ("test", "train"):
        np.testing.assert_array_equal(
            restored.get_accuracy_matrix(stream), plugin.get_accuracy_matrix(stream)
        )
    assert np.isnan(restored.get_accuracy_matrix("train")[:, 1:]).all()
    assert restored.result() == plugin.result()
    with pytest.raises(ValueError, match="state version"):
        restored.load_state_dict({"version": 99})
    with pytest.raises(KeyError, match="no accuracy matrix recorded for stream 'valid'"):
        restored.get_accuracy_matrix("valid")


@pytest.mark.usefixtures("_avalanche_available")
def test_plugin_without_test_stream_needs_explicit_stream() -> None:
    from avalanche_promptmoe.metrics import TaskAveragedMetrics

    plugin = TaskAveragedMetrics()
    plugin.load_state_dict(
        {
            "version": 1,
            "matrices": {"a": torch.tensor([[0.5]]), "b": torch.tensor([[0.25]])},
            "training_exp": None,
        }
    )
    with pytest.raises(ValueError, match="several streams"):
        _ = plugin.accuracy_matrix
    assert plugin.get_accuracy_matrix("b")[0, 0] == 0.25
