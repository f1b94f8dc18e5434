"""Hash's history-aware modulator under each score reading (issue #18): pool only, + HDR, + HGM, full.

A *reading* fixes what the paper leaves open — the units the penalty δ is read in and how a new
task's router starts (docs/methods.md "Hash"):

* ``raw`` — ``s = mean_n(x W_r)/√d``, Kaiming-uniform router (the library before issue #18);
* ``standardised`` — scores standardised per sample over the experts (δ in units of the spread);
* ``copy_previous`` — raw scores, each task's router starts as a copy of the previous task's;
* ``uniform_pm1`` — raw scores, router drawn U(−1, 1) (score spread of order 1 at task start);
* ``standardised_copy`` — standardised scores and the copied router.

Variants (the paper's ablation, METHODS.md §1.4): ``pool`` (δ = 0, α = 1), ``hdr`` (δ = 0.4, α = 1),
``hgm`` (δ = 0, α = 0.1), ``full`` (δ = 0.4, α = 0.1). Each run prints FAA, CAA, both FFMs, the
share of the training and test selections of tasks 2… that go to the frequent set, and the mean
drift of the frequent / other experts over tasks 2… (per expert, L2, averaged over the layers).

    python experiments/hash_modulator_ablation.py --readings raw standardised --variants pool full \\
        --seeds 0 --protocol ci --json /tmp/hash.jsonl
    python experiments/hash_modulator_ablation.py --table /tmp/hash.jsonl    # mean ± std over seeds
    python experiments/hash_modulator_ablation.py --table /tmp/hash.jsonl --plot hash.png  # and a chart
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "ci"))

READINGS: dict[str, dict[str, Any]] = {
    "raw": {"score_reading": "raw", "router_init": "kaiming"},
    "standardised": {"score_reading": "standardised", "router_init": "kaiming"},
    "copy_previous": {"score_reading": "raw", "router_init": "copy_previous"},
    "uniform_pm1": {"score_reading": "raw", "router_init": "uniform_pm1"},
    "standardised_copy": {"score_reading": "standardised", "router_init": "copy_previous"},
}
VARIANTS: dict[str, dict[str, float]] = {
    "pool": {"delta": 0.0, "alpha": 1.0},
    "hdr": {"delta": 0.4, "alpha": 1.0},
    "hgm": {"delta": 0.0, "alpha": 0.1},
    "full": {"delta": 0.4, "alpha": 0.1},
}


def _protocol(name: str, kit: str | None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(benchmark kwargs, strategy kwargs, Hash settings) of the CI or the kit protocol."""
    if name == "ci":
        from regression import BENCHMARK, METHOD_SETTINGS, STRATEGY

        return dict(BENCHMARK), dict(STRATEGY), dict(METHOD_SETTINGS["hash"])
    from runner import load_config

    cfg = load_config("tinyimagenet32", "hash")
    strategy = {k: v for k, v in cfg["strategy"].items() if k != "backbone"}
    return dict(cfg["benchmark"]), strategy, dict(cfg["method"])


def modulator_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Means over tasks 2… and the prompted layers of the probe's per-task figures (NaN-aware)."""
    out = {}
    for key in ("train_frequent_share", "test_frequent_share", "frequent_drift", "other_drift",
                "spread_start", "spread_end"):
        values = [v for r in records[1:] for v in r[key] if not math.isnan(v)]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def run_one(reading: str, variant: str, seed: int = 0, protocol: str = "ci", kit: str | None = None,
            experiences: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """One Hash run; the runner's summary figures plus :func:`modulator_summary`. ``experiences``
    stops after the first N experiences (a screen of the mechanism: FAA etc. are then over N tasks);
    ``threads`` sets torch's intra-op threads (default: up to 2, the CI machine's cores)."""
    from types import SimpleNamespace

    import torch
    from runner import train_and_evaluate

    from avalanche_promptmoe.benchmarks import load_reference_backbone, split_tinyimagenet32
    from avalanche_promptmoe.methods.hash.strategy import HashPromptStrategy

    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))
    bench, strat, settings = _protocol(protocol, kit)
    bench["seed"] = seed
    benchmark = split_tinyimagenet32(kit, **bench)
    if experiences is not None:
        benchmark = SimpleNamespace(train_stream=benchmark.train_stream[:experiences],
                                    test_stream=benchmark.test_stream[:experiences])
    settings.update(READINGS[reading], **VARIANTS[variant])
    strategy = HashPromptStrategy(backbone=load_reference_backbone(kit), num_classes=100, seed=seed, device="cpu",
                                  loggers=[], progress=False, **strat, **settings)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_and_evaluate(strategy, benchmark, Path(tmp))
    return {"reading": reading, "variant": variant, "seed": seed, "protocol": protocol, "experiences": experiences,
            "time_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), **{k: summary[k] for k in ("faa", "caa", "ffm", "ffm_hide", "accuracy_matrix")},
            **modulator_summary(summary["hash_modulator"]), "hash_modulator": summary["hash_modulator"]}


def _result_line(r: dict[str, Any]) -> str:
    return (f"{r['reading']:<18} {r['variant']:<5} seed {r['seed']} T={len(r['hash_modulator'])}  "
            f"FAA {100 * r['faa']:6.2f}  CAA {100 * r['caa']:6.2f}  FFM {100 * r['ffm']:5.2f}  "
            f"FFM-HiDe {100 * r['ffm_hide']:5.2f}  freq. share train {100 * r['train_frequent_share']:5.1f} % "
            f"test {100 * r['test_frequent_share']:5.1f} %  drift freq. {r['frequent_drift']:.3f} "
            f"other {r['other_drift']:.3f}  spread {r['spread_start']:.2f}→{r['spread_end']:.2f}  "
            f"({r['time_s']:.0f} s)")


TABLE_METRICS = ("faa", "caa", "ffm", "ffm_hide")


def ablation_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of runs grouped by (protocol, tasks, reading, variant) in :func:`_grouped`'s
    order (protocols and readings as first seen, variants pool, hdr, hgm, full): FAA, CAA, FFM,
    FFM-HiDe as mean ± sample std over the seeds (%), the frequent share of training / test
    selections (%) and the frequent / other drift as means over the seeds, the seeds, the mean time
    per run. A (group, seed) measured twice keeps the last line (a re-run replaces a run)."""
    groups = _grouped(results)
    lines = ["| protocol | tasks | reading | variant | seeds | FAA | CAA | FFM | FFM-HiDe "
             "| share train / test % | drift frequent / other | time/run |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (protocol, tasks, reading, variant), by_seed in groups.items():
        runs = [by_seed[s] for s in sorted(by_seed)]
        cells = []
        for metric in TABLE_METRICS:
            values = [100 * r[metric] for r in runs]
            mean = statistics.fmean(values)
            cells.append(f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(runs) > 1 else f"{mean:.2f}")
        share = [statistics.fmean(100 * r[k] for r in runs) for k in ("train_frequent_share", "test_frequent_share")]
        drift = [statistics.fmean(r[k] for r in runs) for k in ("frequent_drift", "other_drift")]
        seeds = ",".join(str(s) for s in sorted(by_seed))
        lines.append(f"| {protocol} | {tasks} | {reading} | {variant} | {seeds} | " + " | ".join(cells)
                     + f" | {share[0]:.1f} / {share[1]:.1f} | {drift[0]:.2f} / {drift[1]:.2f} "
                     f"| {statistics.fmean(r['time_s'] for r in runs):.0f} s |")
    return "\n".join(lines)


def _grouped(results: list[dict[str, Any]]) -> dict[tuple, dict[int, dict[str, Any]]]:
    """``{(protocol, tasks, reading, variant): {seed: run}}``: protocols and readings in the order
    first seen, the variants of a reading in the order pool, hdr, hgm, full; a (group, seed) measured
    twice keeps the last run."""
    groups: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in results:
        key = (r["protocol"], len(r["hash_modulator"]), r["reading"], r["variant"])
        groups.setdefault(key, {})[r["seed"]] = r
    first = {}
    for key in groups:
        first.setdefault(key[:2], len(first))
        first.setdefault(key[:3], len(first))
    order = list(VARIANTS)
    ranked = sorted(groups, key=lambda k: (first[k[:2]], first[k[:3]], order.index(k[3]) if k[3] in order else len(order)))
    return {k: groups[k] for k in ranked}


PLOT_METRICS = (("faa", "FAA (%)"), ("ffm", "FFM (%)"), ("train_frequent_share", "frequent share of\ntraining selections (%)"))


def ablation_plot(results: list[dict[str, Any]], path: str | Path):
    """Bar chart of the ablation, saved to ``path`` (PNG): one column per (protocol, tasks), rows FAA,
    FFM and the frequent experts' share of the training selections; per reading a group of bars
    pool / + HDR / + HGM / full, height the mean over seeds, whisker ± the sample std (≥ 2 seeds).
    Returns the matplotlib figure (its bars in the order drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _grouped(results)
    columns = list(dict.fromkeys((protocol, tasks) for protocol, tasks, _, _ in groups))
    colours = dict(zip(VARIANTS, ("#9e9e9e", "#4c72b0", "#dd8452", "#55a868")))
    fig, axes = plt.subplots(len(PLOT_METRICS), len(columns), figsize=(4.8 * len(columns), 8.4), squeeze=False)
    width = 0.8 / len(VARIANTS)
    for c, (protocol, tasks) in enumerate(columns):
        readings = list(dict.fromkeys(g[2] for g in groups if g[:2] == (protocol, tasks)))
        for row, (metric, label) in enumerate(PLOT_METRICS):
            ax = axes[row][c]
            for v, variant in enumerate(VARIANTS):
                xs, means, stds = [], [], []
                for i, reading in enumerate(readings):
                    by_seed = groups.get((protocol, tasks, reading, variant))
                    if not by_seed:
                        continue
                    values = [100 * r[metric] for r in by_seed.values()]
                    xs.append(i + (v - (len(VARIANTS) - 1) / 2) * width)
                    means.append(statistics.fmean(values))
                    stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
                ax.bar(xs, means, width, yerr=stds, capsize=2, color=colours[variant],
                       label=variant if row == 0 and c == 0 else None)
            ax.set_xticks(range(len(readings)), readings, rotation=20, fontsize=8)
            ax.set_ylabel(label)
            if metric != "train_frequent_share":
                low = min((b.get_height() for b in ax.patches), default=0.0)
                ax.set_ylim(bottom=max(0.0, math.floor(low - 3)))
            if row == 0:
                ax.set_title(f"{protocol} protocol, {tasks} tasks")
    fig.legend(loc="upper center", ncol=len(VARIANTS), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    return fig


def read_results(paths: list[str]) -> list[dict[str, Any]]:
    """The JSON lines written by ``--json`` (``NaN`` allowed, as Python's json writes it)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"--table: no such file {', '.join(missing)} (write one with --json)")
    out = []
    for path in paths:
        out += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readings", nargs="+", default=["raw"], choices=sorted(READINGS))
    p.add_argument("--variants", nargs="+", default=sorted(VARIANTS), choices=sorted(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--protocol", choices=("ci", "kit"), default="ci")
    p.add_argument("--kit", default=None)
    p.add_argument("--experiences", type=int, default=None,
                   help="stop after the first N experiences (mechanism screen; FAA etc. over N tasks)")
    p.add_argument("--json", default=None, help="append each result as one JSON line here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: up to 2); 1 lets two ablations share 2 cores")
    p.add_argument("--table", nargs="+", default=None, metavar="JSONL",
                   help="print the markdown table (mean ± std over seeds) of these --json files and exit")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="with --table: also draw the bar chart (mean ± std over seeds) to this PNG")
    args = p.parse_args(argv)
    if args.plot and not args.table:
        p.error("--plot draws what --table reads: pass --table JSONL... too")
    if args.table:
        try:
            results = read_results(args.table)
        except FileNotFoundError as err:
            p.error(str(err))
        print(ablation_table(results))
        if args.plot:
            ablation_plot(results, args.plot)
            print(f"plot: {args.plot}")
        return results
    results = []
    for seed in args.seeds:
        for reading in args.readings:
            for variant in args.variants:
                r = run_one(reading, variant, seed, args.protocol, args.kit, args.experiences, args.threads)
                results.append(r)
                print(_result_line(r), flush=True)
                if args.json:
                    with Path(args.json).open("a") as f:
                        print(json.dumps(r), file=f)
    return results


if __name__ == "__main__":
    main()
