"""Compare runs logged to MLflow: a table of FAA / CAA / FFM (and FFM-HiDe when logged) / wall time /
trainable parameters per method (mean ± std over seeds), and a bar plot with std error bars.

Finds every FINISHED run with ``final/faa``: runs of the scripts and runs made through the Python
API (``MLflowLogger`` logs ``final/*`` by itself).

    python experiments/compare.py                                   # experiment "tinyimagenet32"
    python experiments/compare.py --experiment cub200 --plot cmp.png
    python experiments/compare.py --tracking-uri sqlite:///mlruns/mlflow.db
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

COLUMNS = ("faa", "caa", "ffm", "wall_time_s", "trainable_params")
OPTIONAL = ("ffm_hide",)  # shown when some run logged it
SETTING_PREFIXES = ("benchmark.", "strategy.", "method.", "backbone.", "protocol.")
SEED_PARAMS = {"benchmark.seed", "strategy.seed", "protocol.seed", "protocol.root"}
PERCENT = {"faa": "FAA %", "caa": "CAA %", "ffm": "FFM %", "ffm_hide": "FFM-HiDe %"}


def collect(tracking_uri: str, experiment: str) -> dict[str, list[dict[str, float]]]:
    """Finished runs of ``experiment`` grouped by their ``method`` tag and settings → final metrics.

    Runs of one method whose logged settings differ (other than the seed) are not pooled into one
    mean: each set of settings gets its own row, labelled with the settings that differ."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} in {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    groups: dict[str, dict[tuple, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        metrics = {k: r.data.metrics.get(f"final/{k}", math.nan) for k in COLUMNS}
        metrics.update({k: r.data.metrics[f"final/{k}"] for k in OPTIONAL if f"final/{k}" in r.data.metrics})
        if math.isnan(metrics["faa"]):
            continue
        method = r.data.tags.get("method", r.info.run_name or "?")
        groups[method][settings_key(r.data.params)].append(metrics)
    out: dict[str, list[dict[str, float]]] = {}
    for method, by_settings in groups.items():
        for key, rows in by_settings.items():
            out[method if len(by_settings) == 1 else f"{method} [{_differing(key, by_settings)}]"] = rows
    return out


def settings_key(params: dict[str, str]) -> tuple:
    """The run's settings that define a group: benchmark/strategy/method params except the seed."""
    return tuple(sorted((k, v) for k, v in params.items()
                        if k.startswith(SETTING_PREFIXES) and k not in SEED_PARAMS))


def _differing(key: tuple, siblings: dict[tuple, Any]) -> str:
    mine = dict(key)
    names = sorted({k for other in siblings for k, _ in set(other) ^ set(key)})
    shown = ", ".join(f"{k}={mine.get(k, '-')}" for k in names[:3])
    return shown + (f", +{len(names) - 3} more" if len(names) > 3 else "")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single run), NaNs left out."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0


def columns(results: dict[str, list[dict[str, float]]]) -> tuple[str, ...]:
    """The metric columns: FAA, CAA, FFM, then FFM-HiDe when any run has it, wall time, parameters."""
    extra = tuple(k for k in OPTIONAL if any(k in r for rs in results.values() for r in rs))
    return (*COLUMNS[:3], *extra, *COLUMNS[3:])


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Mean ± std over runs (seeds) per method, sorted by FAA."""
    def stat(vals: list[float], pct: bool) -> str:
        m, s = mean_std(vals)
        return f"{100 * m:6.2f} ± {100 * s:4.2f}" if pct else f"{m:10.0f}"

    cols = columns(results)
    width = max(8, *(len(m) + 1 for m in results))
    heads = [f"{PERCENT[c]:>14}" if c in PERCENT else f"{'wall s' if c == 'wall_time_s' else 'params':>10}" for c in cols]
    lines = [f"{'method':<{width}}{'runs':>5}  " + "  ".join(heads)]
    order = sorted(results, key=lambda k: -sum(r["faa"] for r in results[k]) / len(results[k]))
    for method in order:
        rs = results[method]
        cells = [stat([r.get(c, math.nan) for r in rs], pct=c in PERCENT) for c in cols]
        lines.append(f"{method:<{width}}{len(rs):>5}  "
                     + "  ".join(f"{v:>14}" if c in PERCENT else f"{v:>10}" for c, v in zip(cols, cells)))
    return "\n".join(lines)


def figure(results: dict[str, list[dict[str, float]]], title: str) -> Any:
    """Bars of the mean per method with error bars of the std over runs (seeds), one panel per
    metric (FAA, CAA, FFM, and FFM-HiDe when logged); each bar is labelled ``mean ± std (n)``."""
    from matplotlib.figure import Figure

    methods = sorted(results, key=lambda k: -sum(r["faa"] for r in results[k]) / len(results[k]))
    keys = [c for c in columns(results) if c in PERCENT]
    fig = Figure(figsize=(4 * len(keys), 3.8))
    axes = fig.subplots(1, len(keys))
    for ax, key in zip(axes, keys):
        stats = [mean_std([r.get(key, math.nan) for r in results[m]]) for m in methods]
        means, stds = [100 * m for m, _ in stats], [100 * s for _, s in stats]
        ax.bar(methods, means, yerr=stds, capsize=4, ecolor="#333333",
               color=["#4477aa" if m not in ("seq", "joint", "linear") else "#bbbbbb" for m in methods])
        ax.set_title(PERCENT[key].replace(" %", " (%)"))
        ax.tick_params(axis="x", rotation=45)
        for i, (m, s) in enumerate(zip(means, stds)):
            ax.text(i, m + (0 if math.isnan(s) else s), f"{m:.1f} ± {s:.1f} ({len(results[methods[i]])})",
                    ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"{title}: mean ± std over seeds (n runs per bar)")
    fig.tight_layout()
    return fig


def plot(results: dict[str, list[dict[str, float]]], path: str | Path, title: str) -> Path:
    """Saves :func:`figure` to ``path``."""
    figure(results, title).savefig(path, dpi=120)
    return Path(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    p.add_argument("--experiment", default="tinyimagenet32")
    p.add_argument("--plot", default="compare.png", help="where to save the plot ('' to skip)")
    args = p.parse_args(argv)
    results = collect(args.tracking_uri, args.experiment)
    if not results:
        raise SystemExit(f"no finished runs with final metrics in experiment {args.experiment!r}")
    print(table(results))
    if args.plot:
        print(f"plot: {plot(results, args.plot, args.experiment)}")
    return results


if __name__ == "__main__":
    main()
