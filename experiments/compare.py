"""Compare runs logged to MLflow: a table of FAA / CAA / FFM / wall time / trainable parameters per
method, and a bar plot.

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
SETTING_PREFIXES = ("benchmark.", "strategy.", "method.")
SEED_PARAMS = {"benchmark.seed"}


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


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Mean ± std over runs (seeds) per method, sorted by FAA."""
    def stat(vals: list[float], pct: bool) -> str:
        m = sum(vals) / len(vals)
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return f"{100 * m:6.2f} ± {100 * s:4.2f}" if pct else f"{m:10.0f}"

    width = max(8, *(len(m) + 1 for m in results))
    lines = [f"{'method':<{width}}{'runs':>5}  {'FAA %':>14}  {'CAA %':>14}  {'FFM %':>14}  {'wall s':>10}  {'params':>10}"]
    order = sorted(results, key=lambda k: -sum(r["faa"] for r in results[k]) / len(results[k]))
    for method in order:
        rs = results[method]
        cells = [stat([r[c] for r in rs], pct=c in ("faa", "caa", "ffm")) for c in COLUMNS]
        lines.append(f"{method:<{width}}{len(rs):>5}  " + "  ".join(f"{c:>14}" if i < 3 else f"{c:>10}" for i, c in enumerate(cells)))
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, float]]], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(results, key=lambda k: -sum(r["faa"] for r in results[k]) / len(results[k]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(axes, ("faa", "caa", "ffm"), ("FAA (%)", "CAA (%)", "FFM (%)")):
        means = [100 * sum(r[key] for r in results[m]) / len(results[m]) for m in methods]
        ax.bar(methods, means, color=["#4477aa" if m not in ("seq", "joint", "linear") else "#bbbbbb" for m in methods])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
        for i, v in enumerate(means):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
