"""Issue #21, item 7: what ``mlflow ui`` shows of a run, checked through the MLflow client (the
browser check is experiments/mlflow_ui_screenshot.py): the experiment opens on its training runs,
the source script / commit / user tags, the benchmark as a dataset with a digest, ``final/faa``
with one step per experience."""

from __future__ import annotations

from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from cl_utils import make_benchmark  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_utils import fresh_store  # noqa: E402
from strategy_kit import make_tiny_strategy  # noqa: E402

from avalanche_promptmoe.logging import MLflowLogger  # noqa: E402
from avalanche_promptmoe.logging.run_record import benchmark_dataset, start_system_metrics  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _run(tmp_path: Path, protocol: dict | None):
    uri = fresh_store(tmp_path / "store")
    bm = make_benchmark(n_exp=2, per_class=8, test_per_class=4)
    if protocol is not None:
        bm.protocol = protocol
    logger = MLflowLogger("ui", tracking_uri=uri, benchmark=bm if protocol is not None else None)
    s = make_tiny_strategy("seq", num_classes=4, loggers=[logger])
    for exp in bm.train_stream:
        s.train(exp, eval_streams=[])
        s.eval(bm.test_stream)
    logger.close()
    return MlflowClient(uri), logger.run_id


def test_run_carries_source_commit_user_dataset_and_faa_history(tmp_path):
    protocol = {"benchmark": "tiny_blocks", "n_experiences": 2, "split_sha256": "ab" * 32}
    client, run_id = _run(tmp_path, protocol)
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["mlflow.source.name"].endswith(".py") or tags["mlflow.source.name"] == "<interactive>"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI overview
    inputs = run.inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in inputs] == [("tiny_blocks", "ab" * 8)]
    history = client.get_metric_history(run_id, "final/faa")
    assert [m.step for m in history] == [1, 2], "one FAA point per experience, step = tasks trained"
    assert {"final/faa", "final/caa", "final/ffm", "final/ffm_hide"} <= set(run.data.metrics)
    assert not any(k.startswith("system/") for k in run.data.metrics), "system metrics are for CUDA runs"


def test_a_benchmark_without_protocol_is_logged_from_its_stream(tmp_path):
    client, run_id = _run(tmp_path, None)
    (logged,) = client.get_run(run_id).inputs.dataset_inputs
    assert logged.dataset.name == "benchmark" and len(logged.dataset.digest) == 16
    assert '"experiences": 2' in logged.dataset.profile
    again = benchmark_dataset(None, {"name": "x", "experiences": 2})
    assert again.digest == benchmark_dataset(None, {"experiences": 2, "name": "x"}).digest  # canonical


def test_system_metrics_only_on_cuda():
    assert start_system_metrics("0" * 32, "sqlite:///unused.db", "cpu") is None
