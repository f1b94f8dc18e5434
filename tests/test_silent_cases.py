"""Issue #22 silent cases 4–10: each is now a warning, an error or a fix."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest
from cl_utils import make_images, tiny_backbone
from torch.utils.data import TensorDataset

from avalanche_promptmoe import LinearProbeStrategy, SequentialPromptStrategy

ROOT = Path(__file__).resolve().parents[1]
KW = dict(num_classes=4, device="cpu", progress=False, train_epochs=1, train_mb_size=8)


def _benchmark(n_classes=4, n_exp=2, nan_test_samples: int = 0):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    def ds(x, y):
        d = TensorDataset(x, y)
        d.targets = y.tolist()
        return as_classification_dataset(d)

    x, y = make_images(n_classes, 8, seed=1)
    xt, yt = make_images(n_classes, 4, seed=2)
    xt[:nan_test_samples] = float("nan")
    return class_incremental_benchmark({"train": ds(x, y), "test": ds(xt, yt)},
                                       class_order=list(range(n_classes)), num_experiences=n_exp)


# --------------------------------------------------------------------------- 4. one-class experience
def test_a_one_class_experience_warns_once_that_nothing_is_learned():
    s = SequentialPromptStrategy(backbone=tiny_backbone(), loggers=[], layers=(0,), length=2,
                                 **{**KW, "num_classes": 3, "train_epochs": 2})
    bm = _benchmark(n_classes=3, n_exp=3)  # one class per experience
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.train(bm.train_stream[0], eval_streams=[])
    ours = [w for w in caught if "one class" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "experience 0" in str(ours[0].message) and "nothing is learned" in str(ours[0].message)


def test_two_class_experiences_do_not_warn():
    s = SequentialPromptStrategy(backbone=tiny_backbone(), loggers=[], layers=(0,), length=2, **KW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.train(_benchmark().train_stream[0], eval_streams=[])
    assert not [w for w in caught if "one class" in str(w.message)]


# --------------------------------------------------------------------------- 5. NaN pixels in evaluation
def test_non_finite_evaluation_images_warn_once_per_evaluation_with_the_count():
    s = LinearProbeStrategy(backbone=tiny_backbone(), loggers=[], lr=0.01, **KW)
    bm = _benchmark(nan_test_samples=3)
    s.train(bm.train_stream[0], eval_streams=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.eval(bm.test_stream)
    ours = [w for w in caught if "non-finite" in str(w.message)]
    assert len(ours) == 1 and "3 of 16 evaluation images" in str(ours[0].message)
    clean = _benchmark()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.eval(clean.test_stream)
    assert not [w for w in caught if "non-finite" in str(w.message)]


# --------------------------------------------------------------------------- 6–8. MLflow loggers
mlflow = pytest.importorskip("mlflow")


def _logger(tmp_path, name="silent"):
    from mlflow_utils import fresh_store

    from avalanche_promptmoe.logging import MLflowLogger

    return MLflowLogger(name, tracking_uri=fresh_store(tmp_path / "store"))


def test_the_same_logger_twice_is_refused(tmp_path):
    lg = _logger(tmp_path)
    with pytest.raises(ValueError, match=r"loggers: the same MLflowLogger object is passed twice"):
        LinearProbeStrategy(backbone=tiny_backbone(), loggers=[lg, lg], lr=0.01, **KW)
    lg.close()


def test_a_closed_logger_is_refused_by_a_new_strategy(tmp_path):
    lg = _logger(tmp_path)
    lg.log_single_metric("x", 1.0, 0)
    lg.close()
    with pytest.raises(ValueError, match=r"loggers: this MLflowLogger is closed.*new MLflowLogger"):
        LinearProbeStrategy(backbone=tiny_backbone(), loggers=[lg], lr=0.01, **KW)


def test_two_loggers_each_resume_their_own_run(tmp_path):
    from mlflow.tracking import MlflowClient
    from mlflow_utils import fresh_store

    from avalanche_promptmoe.logging import MLflowLogger

    uri_a, uri_b = fresh_store(tmp_path / "a"), fresh_store(tmp_path / "b")
    bm = _benchmark()
    a, b = MLflowLogger("two", tracking_uri=uri_a), MLflowLogger("two", tracking_uri=uri_b)
    s = LinearProbeStrategy(backbone=tiny_backbone(), loggers=[a, b], lr=0.01, **KW)
    s.train(bm.train_stream[0], eval_streams=[])
    s.save_checkpoint(tmp_path / "c.pt")
    runs = (a.run_id, b.run_id)
    a.close(status="KILLED")
    b.close(status="KILLED")
    a2, b2 = MLflowLogger("two", tracking_uri=uri_a), MLflowLogger("two", tracking_uri=uri_b)
    t = LinearProbeStrategy(backbone=tiny_backbone(), loggers=[a2, b2], lr=0.01, **KW)
    t.resume_from(tmp_path / "c.pt")
    assert (a2.run_id, b2.run_id) == runs  # each continues its own run, none opens a new one
    a2.close()
    b2.close()
    assert MlflowClient(uri_b).get_run(runs[1]).info.status == "FINISHED"


# --------------------------------------------------------------------------- 9. ~ in checkpoint_dir
def test_checkpoint_dir_expands_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = LinearProbeStrategy(backbone=tiny_backbone(), loggers=[], lr=0.01, checkpoint_dir="~/cks", **KW)
    assert s.checkpoint_dir == tmp_path / "cks"


# --------------------------------------------------------------------------- 10. strict JSON
def test_strict_json_writes_null_and_the_reader_accepts_both(tmp_path):
    import numpy as np

    from avalanche_promptmoe.jsonio import read_json, strict_json

    value = {"m": [[0.5, float("nan")], [0.25, 0.75]], "x": np.float32("inf"), "n": np.int64(3), "s": "a"}
    text = strict_json(value)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "m": [[0.5, None], [0.25, 0.75]], "x": None, "n": 3, "s": "a"}
    old = tmp_path / "old.json"
    old.write_text('{"m": [[0.5, NaN]], "f": 0.1}')
    new = tmp_path / "new.json"
    new.write_text(text)
    assert math.isnan(read_json(old, null_as_nan=True)["m"][0][1])
    back = read_json(new, null_as_nan=True)
    assert math.isnan(back["m"][0][1]) and back["n"] == 3


def test_the_runner_summary_is_strict_json(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import runpy

    import runner  # noqa: F401

    spec = runpy.run_path(str(ROOT / "experiments" / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]
    args = ["--method", "linear", "--device", "cpu", "--no-mlflow", "--run-dir", str(tmp_path / "run"),
            "--set", "benchmark.train_per_class=2", "--set", "benchmark.test_per_class=2",
            "--set", "benchmark.n_experiences=2", "--set", "method.epochs=1"]
    sys.modules["runner"].run(spec, args)
    text = (tmp_path / "run" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds a bare {c}"))
    assert summary["accuracy_matrix"][0][1] is None  # the upper triangle is undefined
    results_table = runpy.run_path(str(ROOT / "experiments" / "results_table.py"), run_name="not_main")
    rows = results_table["load_rows"]([tmp_path / "run"], None)
    assert len(rows) == 1 and math.isnan(rows[0]["accuracy_matrix"][0][1])


def test_mlflow_reports_are_strict_json(tmp_path):
    from mlflow.tracking import MlflowClient

    lg = _logger(tmp_path)
    lg.log_report({"faa": 0.5, "accuracy_matrix": [[0.5, float("nan")], [0.25, 0.75]]}, name="summary")
    lg.close()
    local = MlflowClient(lg.tracking_uri).download_artifacts(lg.run_id, "summary.json", str(tmp_path))
    data = json.loads(Path(local).read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in the report"))
    assert data["accuracy_matrix"][0][1] is None and data["faa"] == 0.5
