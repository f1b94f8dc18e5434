"""Markdown table of the runs' summaries (``summary.json``, written by the experiment scripts).

Reads every layout the scripts write: the default ``runs/<benchmark>/<method>/seed<k>/summary.json``
and any ``--run-dir`` folder (its ``summary.json`` at the top, or anywhere below a root given here).
Each summary names its own benchmark, method and seed, so the folders' names do not matter.

    python experiments/results_table.py --benchmark tinyimagenet32                 # ./runs
    python experiments/results_table.py --benchmark cub200 --runs runs my_runs/cub_hash_seed1
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from avalanche_promptmoe.jsonio import read_json

ORDER = ("joint", "hash", "smope", "hlgp", "hide", "l2p", "dualprompt", "codaprompt", "linear", "seq")
REQUIRED = ("method", "benchmark", "seed", "faa", "caa", "ffm", "wall_time_s", "trainable_params")


def find_summaries(roots: Iterable[str | Path]) -> list[Path]:
    """Every ``summary.json`` under the given folders (recursively), or the files themselves.

    Raises:
        FileNotFoundError: a root does not exist (named).
    """
    found: dict[Path, None] = {}
    for root in map(Path, roots):
        if root.is_file():
            found[root.resolve()] = None
        elif root.is_dir():
            found.update({p.resolve(): None for p in sorted(root.rglob("summary.json"))})
        else:
            raise FileNotFoundError(f"--runs: {root} does not exist")
    return list(found)


def load_rows(roots: Iterable[str | Path], benchmark: str | None) -> list[dict[str, Any]]:
    """The summaries of ``benchmark`` (all when None), sorted by method order then seed.

    Raises:
        ValueError: a ``summary.json`` lacks a required key (the file and keys are named).
    """
    rows = []
    for path in find_summaries(roots):
        s = read_json(path, null_as_nan=True)  # strict JSON (null) or older files with a bare NaN
        missing = [k for k in REQUIRED if k not in s]
        if missing:
            raise ValueError(f"{path}: not a run summary (missing {missing})")
        if benchmark is None or s["benchmark"] == benchmark:
            rows.append({**s, "path": str(path)})
    rows.sort(key=lambda s: (ORDER.index(s["method"]) if s["method"] in ORDER else 99, s["method"], s["seed"]))
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    hide = any("ffm_hide" in s for s in rows)
    head = "| method | seed | FAA % | CAA % | FFM % |" + (" FFM-HiDe % |" if hide else "")
    lines = [head + " last-step stream acc. (sample-weighted) % | wall time | trainable params |",
             "|---|---:|---:|---:|---:|" + ("---:|" if hide else "") + "---:|---:|---:|"]
    for s in rows:
        sw = s.get("sample_weighted_stream_acc", math.nan)
        extra = (f" {100 * s['ffm_hide']:.2f} |" if "ffm_hide" in s else " – |") if hide else ""
        lines.append(
            f"| {s['method']} | {s['seed']} | {100 * s['faa']:.2f} | {100 * s['caa']:.2f} | {100 * s['ffm']:.2f} |"
            f"{extra} {100 * sw:.2f} | {s['wall_time_s'] / 60:.1f} min | {s['trainable_params']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="tinyimagenet32", help="benchmark name ('all' for every one)")
    p.add_argument("--runs", nargs="+", default=["runs"],
                   help="folders searched recursively for summary.json, or summary files (default ./runs)")
    args = p.parse_args(argv)
    rows = load_rows(args.runs, None if args.benchmark == "all" else args.benchmark)
    if not rows:
        raise SystemExit(f"no summary.json of benchmark {args.benchmark!r} under {', '.join(args.runs)}")
    out = markdown(rows)
    print(out)
    return out


if __name__ == "__main__":
    main()
