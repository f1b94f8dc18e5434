"""MLflowLogger end to end: a real Avalanche Naive run logged to SQLite, read back with MlflowClient."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

mlflow = pytest.importorskip("mlflow")

from avalanche.benchmarks import class_incremental_benchmark  # noqa: E402
from avalanche.benchmarks.utils import as_classification_dataset  # noqa: E402
from avalanche.evaluation.metrics import (  # noqa: E402
    accuracy_matrix_metrics,
    accuracy_metrics,
    loss_metrics,
)
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from PIL import Image  # noqa: E402

import avalanche_promptmoe  # noqa: E402
from avalanche_promptmoe.logging import (  # noqa: E402
    MLflowFallbackWarning,
    MLflowLogger,
    plot_accuracy_matrix,
    plot_expert_usage,
)
from avalanche_promptmoe.metrics import final_average_accuracy, task_averaged_metrics  # noqa: E402

# MLflow's own SQLAlchemy models trigger this on every new store; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

NUM_CLASSES, NUM_EXPERIENCES, DIM = 6, 3, 16
STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream"
FAA = "FAA/eval_phase/test_stream"


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite file: copying it saves MLflow's 2-5 s of migrations."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _store_in(directory: Path, template: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, directory / "mlflow.db")
    return f"sqlite:///{directory}/mlflow.db"


def _dataset(n_per_class: int, generator: torch.Generator) -> torch.utils.data.TensorDataset:
    means = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(123)) * 3.0
    y = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    x = means[y] + torch.randn(len(y), DIM, generator=generator)
    ds = torch.utils.data.TensorDataset(x, y)
    ds.targets = y.tolist()
    return ds


def _benchmark(num_experiences: int = NUM_EXPERIENCES):
    gen = torch.Generator().manual_seed(0)
    streams = {"train": _dataset(40, gen), "test": _dataset(20, gen)}
    return class_incremental_benchmark(
        {k: as_classification_dataset(v) for k, v in streams.items()},
        class_order=list(range(NUM_CLASSES)),
        num_experiences=num_experiences,
    )


def _run_naive(logger: MLflowLogger, num_experiences: int = NUM_EXPERIENCES):
    """Trains and evaluates after each experience; returns the evaluator and our metric plugin."""
    benchmark = _benchmark(num_experiences)
    task_metrics = task_averaged_metrics()
    evaluator = EvaluationPlugin(
        accuracy_metrics(minibatch=True, experience=True, stream=True),
        loss_metrics(epoch=True),
        accuracy_matrix_metrics(),
        task_metrics,
        loggers=[logger],
        collect_all=True,
    )
    model = nn.Linear(DIM, NUM_CLASSES)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=1,
        eval_mb_size=64,
        evaluator=evaluator,
        device="cpu",
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
    return evaluator, task_metrics


def _read_csv(path: Path) -> np.ndarray:
    with path.open() as fh:
        rows = list(csv.reader(fh))[1:]
    return np.array([[float(v) if v else np.nan for v in row[1:]] for row in rows])


def test_naive_run_is_recorded_in_mlflow(tmp_path: Path, migrated_db: Path) -> None:
    uri = _store_in(tmp_path, migrated_db)
    logger = MLflowLogger("unit", tracking_uri=uri, run_name="naive", params={"extra": {"k": 1}})
    logger.log_config({"method": {"name": "naive", "lr": 0.1}, "benchmark": {"seeds": [0, 1]}})
    evaluator, task_metrics = _run_naive(logger)
    logger.log_expert_usage(torch.arange(24).reshape(3, 2, 4), layers=[0, 2, 4])
    logger.close()
    logger.close()  # idempotent

    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == logger.experiment_id
    assert Path(run.info.artifact_uri).is_relative_to(tmp_path / "artifacts")
    params = run.data.params
    assert params["method.lr"] == "0.1" and params["benchmark.seeds"] == "[0, 1]"
    assert params["extra.k"] == "1"  # constructor params, logged at before_training
    assert params["library_version"] == avalanche_promptmoe.__version__ and params["git_commit"]
    assert run.data.tags["torch_version"] == torch.__version__

    # One point per eval, at Avalanche's x_plot, with Avalanche's values.
    all_metrics = evaluator.get_all_metrics()
    history = sorted(client.get_metric_history(logger.run_id, STREAM_ACC), key=lambda m: m.step)
    assert len(history) == NUM_EXPERIENCES
    assert [m.step for m in history] == list(all_metrics[STREAM_ACC][0])
    assert [m.value for m in history] == pytest.approx(list(all_metrics[STREAM_ACC][1]))
    assert len(set(m.step for m in history)) == NUM_EXPERIENCES
    assert (
        len(client.get_metric_history(logger.run_id, "Loss_Epoch/train_phase/train_stream"))
        == NUM_EXPERIENCES
    )
    faa = all_metrics[FAA][1][-1]
    assert run.data.metrics[FAA] == pytest.approx(faa)
    assert faa == pytest.approx(final_average_accuracy(task_metrics.accuracy_matrix))
    assert not any(k.startswith(("Top1_Acc_MB", "TaskAccMatrix", "EvalStream")) for k in run.data.metrics)

    out = Path(client.download_artifacts(logger.run_id, "", str(tmp_path / "download")))
    for name in ("TaskAccMatrix_eval_phase_test_stream", "EvalStream_Acc_Matrix"):
        assert (out / "accuracy_matrix" / f"{name}.png").stat().st_size > 0
    matrix = _read_csv(out / "accuracy_matrix" / "TaskAccMatrix_eval_phase_test_stream.csv")
    np.testing.assert_allclose(matrix, task_metrics.accuracy_matrix, atol=1e-6)
    assert matrix.shape == (NUM_EXPERIENCES, NUM_EXPERIENCES)
    usage = _read_csv(out / "expert_usage" / "expert_usage.csv")
    np.testing.assert_array_equal(usage, torch.arange(24).reshape(3, 2, 4).sum(1).numpy())
    assert json.loads((out / "config.json").read_text())["method"]["name"] == "naive"
    report = json.loads((out / "report.json").read_text())
    assert report["summary"][FAA]["value"] == pytest.approx(faa)
    assert FAA in (out / "report.md").read_text()


def test_unreachable_server_falls_back_to_local_store(tmp_path: Path, migrated_db: Path) -> None:
    _store_in(tmp_path, migrated_db)
    start = time.perf_counter()
    with pytest.warns(MLflowFallbackWarning) as record:
        logger = MLflowLogger("unit", tracking_uri="http://127.0.0.1:9", fallback_dir=tmp_path)
        assert logger.run_id is not None  # the run opens lazily, at the first need (here: its id)
    assert time.perf_counter() - start < 15.0
    assert sum(issubclass(w.category, MLflowFallbackWarning) for w in record) == 1
    assert logger.fell_back and logger.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", MLflowFallbackWarning)  # no second warning
        logger.log_config({"seed": 3})
        evaluator, _ = _run_naive(logger, num_experiences=2)
        logger.close()

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["fallback_from"] == "http://127.0.0.1:9"
    assert run.data.params["seed"] == "3"
    assert run.data.metrics[FAA] == pytest.approx(evaluator.get_last_metrics()[FAA])


def test_failure_mid_run_replays_everything_into_fallback(
    tmp_path: Path, migrated_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = _store_in(tmp_path / "primary", migrated_db)
    _store_in(tmp_path / "fallback", migrated_db)
    logger = MLflowLogger("unit", tracking_uri=primary, fallback_dir=tmp_path / "fallback")
    logger.log_config({"a": {"b": 1}})
    for step in range(3):
        logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream", 0.1 * step, step)
    logger.flush()
    primary_run = logger.run_id

    def broken(*args, **kwargs):
        raise MlflowException("tracking server went away")

    monkeypatch.setattr(logger._store.client, "log_batch", broken)
    logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream", 0.5, 3)
    logger.log_single_metric("odd name: ü/..//x", 1.0, 3)
    with pytest.warns(MLflowFallbackWarning):
        logger.flush()
    logger.close(failed=True)

    assert logger.fell_back and logger.run_id != primary_run
    client = MlflowClient(f"sqlite:///{tmp_path}/fallback/mlflow.db")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["fallback_from_run_id"] == primary_run
    assert run.data.params["a.b"] == "1"
    history = client.get_metric_history(logger.run_id, STREAM_ACC)
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert run.data.metrics["odd name_ _/_./x"] == 1.0
    assert {f.path for f in client.list_artifacts(logger.run_id)} >= {"config.json", "report.md"}


def test_plots_write_pngs_of_the_right_shape(tmp_path: Path) -> None:
    acc = np.array([[0.9, np.nan, np.nan, np.nan], [0.8, 0.7, np.nan, np.nan], [0.6, 0.65, 0.95, 0.1]])
    fig = plot_accuracy_matrix(acc, path=tmp_path / "acc.png", title="acc")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3, 4) and image.mask.sum() == np.isnan(acc).sum()
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == sorted(f"{100 * v:.1f}" for v in acc[~np.isnan(acc)])
    with Image.open(tmp_path / "acc.png") as png:
        assert png.format == "PNG"
        assert png.size == tuple(round(v) for v in fig.get_size_inches() * fig.dpi)

    counts = torch.arange(5 * 2 * 4).reshape(5, 2, 4)
    fig = plot_expert_usage(counts, layers=[0, 1, 2, 3, 4], path=tmp_path / "sub" / "usage.png")
    assert len(fig.axes) == 2  # one panel and its colour bar
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), counts.sum(1).numpy())
    with Image.open(tmp_path / "sub" / "usage.png") as png:
        assert png.size == tuple(round(v) for v in fig.get_size_inches() * fig.dpi)
        assert png.size[0] > png.size[1] * 0.5
    assert plot_expert_usage(np.ones((2, 3))).axes[0].images[0].get_array().shape == (2, 3)
    with pytest.raises(ValueError, match="layers"):
        plot_expert_usage(np.ones((2, 3)), layers=[0])
    with pytest.raises(ValueError):
        plot_accuracy_matrix(np.ones(3))


def test_logging_package_imports_neither_mlflow_nor_matplotlib() -> None:
    code = (
        "import sys, avalanche_promptmoe.logging as m; "
        "assert 'mlflow' not in sys.modules and 'matplotlib' not in sys.modules; "
        "assert set(m.__all__) >= {'MLflowLogger', 'plot_accuracy_matrix', 'plot_expert_usage'}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
