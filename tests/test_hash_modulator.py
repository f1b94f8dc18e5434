"""Hash's history-aware modulator has its effect (issue #18), with the default reading: the frequent
experts keep a share of the selections after the first task (HDR is a penalty, not a wall), HGM
shrinks their drift by about α, δ = 0 changes nothing, and the penalised top-K obeys the margin
rule in the reading's units."""

from __future__ import annotations

import json
import math

import pytest
import torch
from avalanche.logging import BaseLogger
from cl_utils import FAST_HIDE, make_benchmark, tiny_backbone
from conftest import make_tiny_vit
from hypothesis import assume, given
from hypothesis import strategies as st

from avalanche_promptmoe import HashPromptStrategy
from avalanche_promptmoe.methods.hash.config import HashConfig
from avalanche_promptmoe.methods.hash.model import HashPromptModel

TINY = dict(num_classes=6, train_mb_size=16, train_epochs=2, device="cpu", progress=False, seed=0,
            layers=(0, 1), num_experts=4, length=2, top_k=2, lr=0.01, optimizer="adam", **FAST_HIDE)


class _NoHistory(HashPromptStrategy):
    """Hash whose tasks start with an empty frequent set (no penalty, no HGM target)."""

    def prepare_task(self, task_id: int) -> None:
        self.model.add_task(frequent=None)


class _Capture(BaseLogger):
    def __init__(self):
        super().__init__()
        self.metrics: dict[str, dict[int, float]] = {}

    def log_single_metric(self, name, value, x_plot):
        self.metrics.setdefault(name, {})[x_plot] = value


def _run(cls=HashPromptStrategy, loggers=(), **kw):
    bm = make_benchmark(n_exp=3)
    s = cls(backbone=tiny_backbone(), loggers=list(loggers), **{**TINY, **kw})
    for i in range(3):
        s.train(bm.train_stream[i], eval_streams=[])
        s.eval(bm.test_stream[: i + 1])
    return s


@pytest.fixture(scope="module")
def default_run():
    return _run(loggers=[_Capture()])


@pytest.fixture(scope="module")
def alpha_one_run():
    return _run(alpha=1.0)


def _mean(records, key):
    values = [v for r in records[1:] for v in r[key] if not math.isnan(v)]
    return sum(values) / len(values)


def test_frequent_experts_still_selected_after_the_first_task(default_run):
    records = default_run.diagnostics()["hash_modulator"]
    assert len(records) == 3 and records[0]["frequent"] == [[], []]
    assert all(len(f) == 2 for r in records[1:] for f in r["frequent"])  # K most used per layer
    assert _mean(records, "train_frequent_share") > 0
    assert _mean(records, "test_frequent_share") > 0
    assert all(0 <= v <= 1 for r in records for v in r["train_frequent_share"] + r["test_frequent_share"])
    json.dumps(records)  # summary.json-ready


def test_figures_reach_the_loggers_per_experience(default_run):
    logged = next(lg for lg in default_run.evaluator.loggers if isinstance(lg, _Capture)).metrics
    records = default_run.diagnostics()["hash_modulator"]
    for fig in ("train_frequent_share", "test_frequent_share", "spread_start", "spread_end", "frequent_drift"):
        series = logged[f"hash_modulator/{fig}/layer1"]
        expected = {r["experience"]: r[fig][1] for r in records if not math.isnan(r[fig][1])}
        assert series == pytest.approx(expected) and len(series) >= 2, fig


def test_hgm_alpha_shrinks_the_frequent_experts_drift(default_run, alpha_one_run):
    damped = _mean(default_run.diagnostics()["hash_modulator"], "frequent_drift")
    full = _mean(alpha_one_run.diagnostics()["hash_modulator"], "frequent_drift")
    assert full > 0 and damped / full <= 0.5, (damped, full)


def test_delta_zero_changes_nothing():
    """δ = 0, α = 1: the frequent sets the history fixes make no difference to training or routing."""
    with_history = _run(delta=0.0, alpha=1.0)
    without = _run(_NoHistory, delta=0.0, alpha=1.0)
    assert with_history.model.task_frequent[1:].any()  # the history did mark experts
    assert torch.equal(with_history.model.pool.keys, without.model.pool.keys)
    assert torch.equal(with_history.model.pool.values, without.model.pool.values)
    acc = [s.evaluator.get_last_metrics()["Top1_Acc_Stream/eval_phase/test_stream"] for s in (with_history, without)]
    assert acc[0] == acc[1]


@pytest.fixture(scope="module", params=sorted({HashConfig().score_reading, "raw", "standardised"}))
def routing_model(request):
    return HashPromptModel(make_tiny_vit(), 4, layers=(0,), num_experts=6, length=2, top_k=2,
                           score_reading=request.param, router_init=HashConfig().router_init)


@given(seed=st.integers(0, 10_000), delta=st.floats(0.05, 3.0), n_freq=st.integers(1, 2),
       scale=st.floats(0.2, 20.0))
def test_penalised_top_k_margin_rule(routing_model, seed, delta, n_freq, scale):
    """A frequent expert whose margin over the K-th best non-frequent expert is below δ is never
    selected; one whose margin is above δ (and no other frequent expert outranks it) always is.
    Margins are in the reading's units (the model's ``last_scores``), for each reading."""
    m = routing_model
    m.delta = delta
    g = torch.Generator().manual_seed(seed)
    freq = torch.zeros(1, 1, m.num_experts, dtype=torch.bool)
    freq[0, 0, torch.randperm(m.num_experts, generator=g)[:n_freq]] = True
    m.task_frequent = freq
    if not m.num_tasks:
        m.routers[0].add_task(generator=g)
    x = torch.randn(8, 5, m.vit.embed_dim, generator=g) * scale
    out = m.route(0, x, 0)
    s, f = m.last_scores[0], freq[0, 0]
    kth_other = s[:, ~f].topk(m.top_k, dim=-1).values[:, -1]  # (B,)
    for b in range(s.shape[0]):
        chosen = set(out.indices[b].tolist())
        pen = s[b] - delta * f
        for e in torch.nonzero(f).flatten().tolist():
            margin = float(s[b, e] - kth_other[b])
            assume(abs(margin - delta) > 1e-4)
            if margin < delta:
                assert e not in chosen
            elif not any(pen[o] > pen[e] for o in torch.nonzero(f).flatten().tolist() if o != e):
                assert e in chosen


def _ablation_script():
    """``experiments/hash_modulator_ablation.py`` as a module (the scripts are not a package)."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    try:
        return importlib.import_module("hash_modulator_ablation")
    finally:
        sys.path.pop(0)


def test_ablation_table_averages_over_seeds_and_a_rerun_replaces_a_run(tmp_path):
    """What a user reads from ``hash_modulator_ablation.py --table``: mean ± sample std over seeds
    per (protocol, reading, variant); a re-measured seed replaces the earlier line."""
    script = _ablation_script()
    ablation_table, read_results = script.ablation_table, script.read_results

    def run(seed, faa, share=0.1, time_s=10.0):
        return {"protocol": "ci", "reading": "standardised", "variant": "full", "seed": seed, "faa": faa,
                "caa": 0.3, "ffm": 0.05, "ffm_hide": 0.06, "train_frequent_share": share,
                "test_frequent_share": share / 2, "frequent_drift": 0.5, "other_drift": 5.0, "time_s": time_s,
                "hash_modulator": [{}, {}]}

    path = tmp_path / "runs.jsonl"
    lines = [run(0, 0.99), run(0, 0.16), run(1, 0.18), run(2, 0.20, share=0.4)]  # seed 0 re-run
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    table = ablation_table(read_results([str(path)]))
    row = table.splitlines()[2]
    assert row.startswith("| ci | 2 | standardised | full | 0,1,2 | 18.00 ± 2.00 | 30.00 ± 0.00 |")
    assert "| 20.0 / 10.0 |" in row and "| 0.50 / 5.00 |" in row and len(table.splitlines()) == 3
    pool = dict(run(0, 0.10), variant="pool")  # measured after full: still listed first
    rows = ablation_table(lines + [pool]).splitlines()[2:]
    assert [r.split(" | ")[3] for r in rows] == ["pool", "full"]


def test_ablation_plot_draws_the_mean_of_each_variant_per_reading(tmp_path):
    """``--table … --plot PNG``: one bar per (reading, variant), height the mean over seeds (FAA, FFM,
    frequent share), in the order pool, + HDR, + HGM, full; a PNG is written."""
    script = _ablation_script()
    ablation_plot, main = script.ablation_plot, script.main

    def run(reading, variant, seed, faa):
        return {"protocol": "kit", "reading": reading, "variant": variant, "seed": seed, "faa": faa,
                "caa": 0.3, "ffm": faa / 2, "ffm_hide": 0.06, "train_frequent_share": 0.1,
                "test_frequent_share": 0.05, "frequent_drift": 0.5, "other_drift": 5.0, "time_s": 1.0,
                "hash_modulator": [{}] * 10}

    results = [run(reading, variant, seed, 0.1 + 0.01 * i + 0.002 * seed)
               for i, (reading, variant) in enumerate((r, v) for r in ("raw", "standardised")
                                                     for v in ("pool", "hdr", "hgm", "full"))
               for seed in (0, 1, 2)]
    fig = ablation_plot(results, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
    faa_axis, ffm_axis = fig.axes[0], fig.axes[1]
    faa_bars = sorted(faa_axis.patches, key=lambda b: b.get_x())  # left to right: raw's four, then standardised's
    expected = [100 * (0.1 + 0.01 * i + 0.002) for i in range(8)]  # the mean over seeds 0, 1, 2
    assert [round(b.get_height(), 6) for b in faa_bars] == [round(e, 6) for e in expected]
    assert [round(b.get_height(), 6) for b in sorted(ffm_axis.patches, key=lambda b: b.get_x())] == [
        round(e / 2, 6) for e in expected]
    assert [t.get_text() for t in faa_axis.get_xticklabels()] == ["raw", "standardised"]
    import matplotlib.pyplot as plt

    plt.close(fig)
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in results) + "\n")
    with pytest.raises(SystemExit):
        main(["--plot", str(tmp_path / "b.png")])  # --plot needs --table
    main(["--table", str(path), "--plot", str(tmp_path / "b.png")])
    assert (tmp_path / "b.png").is_file()
