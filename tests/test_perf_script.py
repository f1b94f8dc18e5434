"""perf/throughput.py runs every kind of row on CPU and prints ratios (figures are not asserted:
speed goals are shown by the script, not by unit tests)."""

from __future__ import annotations

import runpy
from pathlib import Path

PERF = Path(__file__).resolve().parents[1] / "perf" / "throughput.py"


def test_throughput_rows_run_and_report_ratios(capsys):
    main = runpy.run_path(str(PERF), run_name="not_main")["main"]
    rows = ["plain", "prompt-limit", "hash-train", "hlgp-infer"]
    results = main(["--device", "cpu", "--iters", "1", "--warmup", "1", "--batch", "4", "--rows", *rows])
    assert [r["row"] for r in results] == rows
    assert all(r["img_per_s"] > 0 and r["peak_gib"] > 0 for r in results)
    assert [r["training"] for r in results] == [False, True, True, False]
    out = capsys.readouterr().out
    assert "×plain" in out and "×limit" in out and "l2p-avalanche: not run here" in out
