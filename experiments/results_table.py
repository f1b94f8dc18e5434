"""Markdown table of the runs' summaries (``runs/<benchmark>/<method>/seed<k>/summary.json``).

    python experiments/results_table.py --benchmark tinyimagenet32
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("joint", "hash", "smope", "hlgp", "hide", "linear", "seq")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", default="tinyimagenet32")
    p.add_argument("--runs", default=str(ROOT / "runs"))
    args = p.parse_args(argv)
    rows = []
    for path in sorted(Path(args.runs, args.benchmark).glob("*/seed*/summary.json")):
        s = json.loads(path.read_text())
        rows.append(s)
    rows.sort(key=lambda s: (ORDER.index(s["method"]) if s["method"] in ORDER else 99, s["seed"]))
    lines = ["| method | seed | FAA % | CAA % | FFM % | last-step stream acc. (sample-weighted) % | wall time | trainable params |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        sw = s.get("sample_weighted_stream_acc", math.nan)
        lines.append(
            f"| {s['method']} | {s['seed']} | {100 * s['faa']:.2f} | {100 * s['caa']:.2f} | {100 * s['ffm']:.2f} | "
            f"{100 * sw:.2f} | {s['wall_time_s'] / 60:.1f} min | {s['trainable_params']:,} |"
        )
    out = "\n".join(lines)
    print(out)
    return out


if __name__ == "__main__":
    main()
