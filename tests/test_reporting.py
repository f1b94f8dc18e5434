"""Reports: results_table.py reads every layout the runner writes; compare.py shows std error bars
over seeds and FFM-HiDe when logged (figure titles: tests/test_api_logging.py)."""

from __future__ import annotations

import json
import runpy
import statistics
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_utils import fresh_store  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

EXP = Path(__file__).resolve().parents[1] / "experiments"


def _summary(method: str, seed: int, faa: float, benchmark: str = "tinyimagenet32", **extra) -> dict:
    return {"method": method, "benchmark": benchmark, "seed": seed, "faa": faa, "caa": faa + 0.05, "ffm": 0.1,
            "sample_weighted_stream_acc": faa, "wall_time_s": 120.0, "trainable_params": 1234, **extra}


def test_results_table_reads_the_default_and_run_dir_layouts(tmp_path: Path) -> None:
    table = runpy.run_path(str(EXP / "results_table.py"), run_name="not_main")
    default = tmp_path / "runs" / "tinyimagenet32" / "hash" / "seed0"  # runs/<benchmark>/<method>/seed<k>
    own = tmp_path / "my_runs" / "hash_lr_sweep"  # --run-dir my_runs/hash_lr_sweep
    other = tmp_path / "runs" / "cub200" / "seq" / "seed0"
    for folder, summary in ((default, _summary("hash", 0, 0.8)), (own, _summary("hash", 1, 0.7, ffm_hide=0.02)),
                            (other, _summary("seq", 0, 0.3, benchmark="cub200"))):
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary))
    out = table["main"](["--runs", str(tmp_path / "runs"), str(own)])
    rows = [line for line in out.splitlines() if line.startswith("| hash")]
    assert rows == ["| hash | 0 | 80.00 | 85.00 | 10.00 | – | 80.00 | 2.0 min | 1,234 |",
                    "| hash | 1 | 70.00 | 75.00 | 10.00 | 2.00 | 70.00 | 2.0 min | 1,234 |"]
    assert "FFM-HiDe %" in out and "seq" not in out  # other benchmarks are left out
    assert "| seq | 0 | 30.00" in table["main"](["--benchmark", "cub200", "--runs", str(tmp_path)])
    with pytest.raises(SystemExit, match="no summary.json"):
        table["main"](["--benchmark", "imagenet_r", "--runs", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        table["main"](["--runs", str(tmp_path / "does_not_exist")])


def test_compare_plot_has_std_error_bars_and_ffm_hide_column(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("cmp")
    faa = {"hash": [0.80, 0.70, 0.75], "seq": [0.30]}
    for method, values in faa.items():
        for seed, value in enumerate(values):
            run = client.create_run(exp, run_name=f"{method}-seed{seed}")
            metrics = [Metric(f"final/{k}", v, 0, 2) for k, v in
                       {"faa": value, "caa": value, "ffm": 0.1, "wall_time_s": 60.0, "trainable_params": 10.0}.items()]
            if method == "seq":
                metrics.append(Metric("final/ffm_hide", 0.25, 0, 2))
            client.log_batch(run.info.run_id, metrics=metrics, params=[Param("benchmark.seed", str(seed))],
                             tags=[RunTag("method", method)], synchronous=True)
            client.set_terminated(run.info.run_id)
    compare = runpy.run_path(str(EXP / "compare.py"), run_name="not_main")
    results = compare["collect"](uri, "cmp")
    text = compare["table"](results)
    assert "FFM-HiDe %" in text.splitlines()[0]
    hash_row = next(line for line in text.splitlines() if line.startswith("hash"))
    assert f"{100 * statistics.mean(faa['hash']):6.2f} ± {100 * statistics.stdev(faa['hash']):4.2f}" in hash_row
    fig = compare["figure"](results, "cmp")
    faa_ax = fig.axes[0]
    assert [ax.get_title() for ax in fig.axes] == ["FAA (%)", "CAA (%)", "FFM (%)", "FFM-HiDe (%)"]
    (bars,) = [c for c in faa_ax.containers if type(c).__name__ == "ErrorbarContainer"]
    spans = [seg[:, 1] for seg in bars.lines[2][0].get_segments()]  # one vertical segment per method (FAA order)
    mean, std = 100 * statistics.mean(faa["hash"]), 100 * statistics.stdev(faa["hash"])
    np.testing.assert_allclose(sorted(spans[0]), [mean - std, mean + std])
    np.testing.assert_allclose(spans[1], [30.0, 30.0])  # one seed: no spread
    path = compare["plot"](results, tmp_path / "c.png", "cmp")
    assert path.stat().st_size > 1000
