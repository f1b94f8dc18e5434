"""The Python API logs like the scripts: MLflowLogger in ``loggers=[...]`` of one of our strategies
records the resolved settings, the benchmark protocol, expert usage per experience and ``final/*``,
so that ``compare.py`` finds the run; Avalanche's own strategies get what Avalanche exposes."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

mlflow = pytest.importorskip("mlflow")

from cl_utils import FAST_HIDE, make_benchmark, tiny_backbone  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_utils import fresh_store  # noqa: E402
from torch import nn  # noqa: E402

from avalanche_promptmoe import (  # noqa: E402
    HashPromptStrategy,
    LayerGroupedPromptStrategy,
    LinearProbeStrategy,
    SMoPEStrategy,
)
from avalanche_promptmoe.logging import MLflowLogger, plots  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

ROOT = Path(__file__).resolve().parents[1]
HASH = dict(layers=(0, 1), num_experts=4, length=2, top_k=2, lr=0.01,
            **{**FAST_HIDE, "tii_epochs": 1, "tii_replay_epochs": 1, "tap_epochs": 1})


def test_python_api_run_logs_settings_usage_and_final_metrics_and_compare_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    titles: list[str] = []
    for name in ("plot_accuracy_matrix", "plot_expert_usage"):
        real = getattr(plots, name)
        monkeypatch.setattr(plots, name, lambda *a, _real=real, **k: (titles.append(k["title"]), _real(*a, **k))[1])
    uri = fresh_store(tmp_path / "store")
    bm = make_benchmark(n_exp=2, per_class=8, test_per_class=4)
    bm.protocol = {"benchmark": "tiny_blocks", "n_experiences": 2, "seed": 0, "class_order": [0, 1, 2, 3]}
    logger = MLflowLogger("api", tracking_uri=uri, benchmark=bm)
    s = HashPromptStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=16, train_epochs=1,
                           device="cpu", loggers=[logger], progress=False, **HASH)
    for exp in bm.train_stream:
        s.train(exp, eval_streams=[])
        s.eval(bm.test_stream)
    logger.close()

    run = MlflowClient(uri).get_run(logger.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert {k: params[k] for k in ("method.name", "method.top_k", "method.lr", "method.delta", "method.epochs")} == {
        "method.name": "hash", "method.top_k": "2", "method.lr": "0.01", "method.delta": "0.4", "method.epochs": "1"}  # train_epochs=1 ran
    assert params["strategy.class"] == "HashPromptStrategy" and params["strategy.train_mb_size"] == "16"
    assert params["strategy.train_epochs"] == "1" and params["strategy.seed"] == "0"
    assert params["backbone.name"] == "VisionTransformer" and len(params["backbone.fingerprint"]) == 16
    assert params["protocol.benchmark"] == "tiny_blocks" and params["protocol.n_experiences"] == "2"
    assert tags["method"] == "hash" and tags["benchmark"] == "tiny_blocks" and tags["device"] == "cpu"
    A = next(m for m in s.evaluator.metrics if type(m).__name__ == "TaskAveragedMetrics").accuracy_matrix
    assert metrics["final/faa"] == pytest.approx(A[1, :2].mean())
    assert metrics["final/trainable_params"] == s.trainable_parameter_count()
    assert {"final/caa", "final/ffm", "final/wall_time_s", "final/sample_weighted_stream_acc"} <= set(metrics)
    usage = {a.path for a in MlflowClient(uri).list_artifacts(logger.run_id, "expert_usage")}
    assert {f"expert_usage/expert_usage_exp{k}.png" for k in (0, 1)} <= usage
    local = MlflowClient(uri).download_artifacts(logger.run_id, "expert_usage/expert_usage_exp1.csv", str(tmp_path))
    rows = [line.split(",") for line in Path(local).read_text().splitlines()[1:]]
    assert [[int(float(v)) for v in r[1:]] for r in rows] == s.expert_usage().sum(dim=1).tolist()
    # figure titles name the method, the benchmark and the experience, not metric keys and iterations
    assert "hash · tiny_blocks · expert usage after experience 1" in titles
    assert any(t.startswith("hash · tiny_blocks · accuracy after experience 1") for t in titles), titles

    compare = runpy.run_path(str(ROOT / "experiments" / "compare.py"), run_name="not_main")
    results = compare["main"](["--tracking-uri", uri, "--experiment", "api", "--plot", ""])
    assert set(results) == {"hash"} and results["hash"][0]["faa"] == pytest.approx(metrics["final/faa"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("hash"))
    assert f"{100 * metrics['final/faa']:6.2f}" in row


def test_foreign_strategy_logs_what_avalanche_exposes(tmp_path: Path) -> None:
    from avalanche.training import Naive
    from avalanche.training.plugins import ReplayPlugin

    uri = fresh_store(tmp_path / "store")
    bm = make_benchmark(n_exp=2, per_class=4, test_per_class=2, img=8)
    logger = MLflowLogger("naive", tracking_uri=uri)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=4, train_epochs=2, eval_mb_size=8,
                     device="cpu", evaluator=_evaluator(logger),
                     plugins=[ReplayPlugin(mem_size=8)])
    strategy.train(bm.train_stream[0])
    logger.close()
    params = MlflowClient(uri).get_run(logger.run_id).data.params
    expected = {"strategy.class": "Naive", "strategy.train_mb_size": "4", "strategy.eval_mb_size": "8",
                "strategy.train_epochs": "2", "strategy.optimizer": "SGD", "strategy.lr": "0.05",
                "model.class": "Sequential"}
    assert {k: params.get(k) for k in expected} == expected
    assert "ReplayPlugin" in params["strategy.plugins"]


def _evaluator(logger: MLflowLogger):
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    return EvaluationPlugin(accuracy_metrics(experience=True), loggers=[logger])


@pytest.mark.parametrize("cls", [SMoPEStrategy, LayerGroupedPromptStrategy, LinearProbeStrategy])
def test_expert_usage_accessor_of_every_method(cls) -> None:
    small = {SMoPEStrategy: dict(layers=(0, 1), num_experts=4, top_k=2),
             LayerGroupedPromptStrategy: dict(layers=(0, 1), groups=((0, 1),)),
             LinearProbeStrategy: {}}[cls]
    s = cls(backbone=tiny_backbone(), num_classes=4, device="cpu", loggers=[], progress=False, **small)
    usage = s.expert_usage()
    if cls is SMoPEStrategy:  # (layers, heads, experts), zero before training, a copy
        assert usage.shape == (2, 2, 4) and usage.dtype == torch.long and int(usage.sum()) == 0
        usage += 1
        assert int(s.expert_usage().sum()) == 0
    else:  # no sparse expert routing: documented None
        assert usage is None
