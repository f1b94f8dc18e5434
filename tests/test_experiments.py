"""The experiment scripts end to end: on tiny trees in each dataset's layout and on the kit."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from test_benchmark_builders import cifar_root, cub_root, inr_root  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
sys.path.insert(0, str(EXP))

import runner  # noqa: E402

TINY = """
[benchmark]
n_experiences = 2
seed = 0
img_size = 32

[strategy]
backbone = "vit_tiny_patch16_224"
pretrained = false
backbone_kwargs = {{ img_size = 32, patch_size = 8, embed_dim = 64, depth = 2, num_heads = 2 }}
train_mb_size = 8

[method]
epochs = 1
{method}
"""
METHOD_SMALL = {
    "hash": "layers = [0, 1]\nnum_experts = 4\nlength = 2\ntii_epochs = 1\ntii_replay_epochs = 1\ntap_epochs = 1\nsamples_per_class = 8\nn_centroids = 2",
    "seq": "layers = [0]\nlength = 4",
}


def _script(name: str, argv: list[str]) -> dict:
    sys.argv = [str(EXP / f"run_{name}.py"), *argv]
    module = runpy.run_path(str(EXP / f"run_{name}.py"), run_name="not_main")
    return runner.run(module["SPEC"], argv)


def _read_mlflow(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id])


@pytest.mark.parametrize(
    ("name", "fixture", "method"),
    [("cub200", "cub_root", "hash"), ("imagenet_r", "inr_root", "seq"), ("cifar100", "cifar_root", "seq")],
)
def test_script_on_a_tree_in_the_dataset_layout(name, fixture, method, request, tmp_path):
    root = request.getfixturevalue(fixture)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(method=METHOD_SMALL[method]))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    extra = ["--set", "benchmark.check_integrity=false"] if name == "cifar100" else []
    summary = _script(name, ["--method", method, "--config", str(cfg), "--data-root", str(root), "--device", "cpu",
                             "--run-dir", str(tmp_path / "run"), "--tracking-uri", uri, *extra])
    assert len(summary["accuracy_matrix"]) == 2 and 0.0 <= summary["faa"] <= 1.0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["faa"] == summary["faa"]
    runs = _read_mlflow(uri, name)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["final/faa"] == pytest.approx(summary["faa"])
    assert runs[0].data.params["method.name"] == method


def test_kit_script_resume_and_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--method", "hash", "--device", "cpu", "--run-dir", str(tmp_path / "run"), "--tracking-uri", uri,
            "--set", "benchmark.train_per_class=4", "--set", "benchmark.test_per_class=2",
            "--set", "benchmark.n_experiences=2", "--set", "method.epochs=1", "--set", "method.tii_epochs=1",
            "--set", "method.tii_replay_epochs=1", "--set", "method.tap_epochs=1"]
    first = _script("tinyimagenet32", args)
    assert first["resumed_from"] == 0 and len(first["accuracy_matrix"]) == 2
    again = _script("tinyimagenet32", [*args, "--resume"])
    assert again["resumed_from"] == 2
    np.testing.assert_array_equal(np.array(again["accuracy_matrix"]), np.array(first["accuracy_matrix"]))
    runs = _read_mlflow(uri, "tinyimagenet32")  # --resume continues the same MLflow run
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 1
    compare = runpy.run_path(str(EXP / "compare.py"), run_name="not_main")
    results = compare["main"](["--tracking-uri", uri, "--experiment", "tinyimagenet32", "--plot", str(tmp_path / "c.png")])
    assert set(results) == {"hash"} and len(results["hash"]) == 1
    assert results["hash"][0]["faa"] == pytest.approx(first["faa"])
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert runs[0].data.params["method.top_k"] == "2"  # resolved defaults are logged, not only the TOML
    # a run with other settings is not pooled with the first two: its own row, named by the difference
    args[args.index("method.tap_epochs=1")] = "method.tap_epochs=2"
    _script("tinyimagenet32", [*args[:4], "--run-dir", str(tmp_path / "run2"), *args[6:]])
    results = compare["main"](["--tracking-uri", uri, "--experiment", "tinyimagenet32", "--plot", ""])
    assert {k: len(v) for k, v in results.items()} == {"hash [method.tap_epochs=1]": 1, "hash [method.tap_epochs=2]": 1}


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[method\]: unknown keys \['top_kk'\]"):
        _script("tinyimagenet32", ["--method", "hash", "--set", "method.top_kk=3", "--no-mlflow"])
    with pytest.raises(ValueError, match="unknown section"):
        _script("tinyimagenet32", ["--method", "hash", "--set", "model.top_k=3", "--no-mlflow"])
    with pytest.raises(ValueError, match="section.key=value"):
        _script("tinyimagenet32", ["--method", "hash", "--set", "top_k=3", "--no-mlflow"])


def test_every_shipped_config_validates():
    from avalanche_promptmoe.methods.registry import METHODS, get_strategy_class

    specs = {}
    for script in EXP.glob("run_*.py"):
        spec = runpy.run_path(str(script), run_name="not_main")["SPEC"]
        specs[spec.name] = spec
    assert set(specs) == {"tinyimagenet32", "cifar100", "cub200", "imagenet_r"}
    for name, spec in specs.items():
        for method in METHODS:
            cfg = runner.load_config(name, method)
            runner.validate_config(cfg, spec, get_strategy_class(method))
            cls = get_strategy_class(method)
            cls.config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["method"].items()})
