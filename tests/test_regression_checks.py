"""The CI regression's checks on fabricated results (the real runs are in ci/regression.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ci_regression", ROOT / "ci" / "regression.py")
reg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reg)


def _entry(faa, caa, ffm, tol=0.02):
    return {m: {"mean": v, "std": 0.0, "tolerance": tol} for m, v in (("faa", faa), ("caa", caa), ("ffm", ffm))}


BASE = {"methods": {"hash": _entry(0.30, 0.40, 0.10), "seq": _entry(0.10, 0.20, 0.30), "joint": _entry(0.35, 0.45, 0.05)}}


def _res(faa, caa, ffm, matrix=((0.5,),)):
    return {"faa": faa, "caa": caa, "ffm": ffm, "accuracy_matrix": [list(r) for r in matrix], "time_s": 1.0}


def test_mechanism_traces_must_match_exactly():
    base = {"methods": {"hash": _entry(0.30, 0.40, 0.10) | {"mechanisms": {"expert_selections": 800}}}}
    results = {"hash": _res(0.30, 0.40, 0.10) | {"mechanisms": {"expert_selections": 400}}}
    assert reg.check(results, base, None) == [
        "hash: mechanism expert_selections is 400, expected 800 (a plugin, phase or the routing changed what it does)"
    ]


def test_within_tolerance_passes():
    results = {"hash": _res(0.29, 0.39, 0.11), "seq": _res(0.10, 0.2, 0.3), "joint": _res(0.36, 0.45, 0.05)}
    assert reg.check(results, BASE, None) == []


def test_a_worse_figure_is_reported_readably():
    results = {"hash": _res(0.25, 0.40, 0.15), "seq": _res(0.10, 0.2, 0.3)}
    problems = reg.check(results, BASE, None)
    assert "hash: FAA 25.00 % is 5.00 points lower than the baseline 30.00 % (tolerance 2.00)" in problems
    assert any(p.startswith("hash: FFM 15.00 % is 5.00 points higher") for p in problems)


def test_ordering_and_crash_and_determinism():
    results = {"hash": _res(0.30, 0.40, 0.10), "seq": _res(0.31, 0.2, 0.3), "joint": {"error": "RuntimeError: x", "time_s": 0}}
    problems = reg.check(results, {"methods": {**BASE["methods"], "seq": _entry(0.31, 0.2, 0.3)}}, None)
    assert "joint: crashed (RuntimeError: x)" in problems
    assert any(p.startswith("ordering: hash FAA 30.00 does not beat seq 31.00") for p in problems)
    nan = float("nan")
    same = {"method": "hash", "result": _res(0.30, 0.40, 0.10, matrix=((0.5, nan),))}
    assert reg.check({"hash": _res(0.30, 0.40, 0.10, matrix=((0.5, nan),))}, BASE, same) == []  # NaN == NaN here
    rerun = {"method": "hash", "result": _res(0.30, 0.40, 0.10, matrix=((0.4,),))}
    results = {"hash": _res(0.30, 0.40, 0.10)}
    assert any(p.startswith("determinism: two runs of hash") for p in reg.check(results, BASE, rerun))
    results["joint"] = _res(0.299, 0.3, 0.1)  # a tenth of a point below hash: the bound is broken
    assert any(p.startswith("ordering: joint FAA 29.90 is below hash FAA 30.00") for p in reg.check(results, BASE, None))
    results["joint"] = _res(0.30, 0.3, 0.1)  # level with hash: joint >= hash holds
    assert not any(p.startswith("ordering: joint") for p in reg.check(results, BASE, None))


def test_baselines_file_errors(tmp_path):
    with pytest.raises(SystemExit, match="missing"):
        reg.load_baselines(tmp_path / "none.json", None)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"protocol": {"version": 0}, "methods": {}}))
    with pytest.raises(SystemExit, match="protocol version 0"):
        reg.load_baselines(bad, None)
    other_kit = {"protocol": json.loads(json.dumps(reg.protocol())), "kit_sha256": {"x": "y"}, "methods": {}}
    bad.write_text(json.dumps(other_kit))
    with pytest.raises(SystemExit, match="kit changed"):
        reg.load_baselines(bad, None)


def test_missing_or_corrupt_kit(tmp_path):
    with pytest.raises(SystemExit, match="kit"):
        reg.check_kit(str(tmp_path / "nowhere"))
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "tinyimagenet32-jpeg.tar.xz").write_bytes(b"corrupt")
    (kit / "reference_vit.pth").write_bytes(b"corrupt")
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_vit.json"
    (kit / "reference_vit.json").write_text(src.read_text() if src.exists() else "{}")
    with pytest.raises(SystemExit, match="corrupt or was replaced"):
        reg.check_kit(str(kit))


def test_shipped_baselines_match_the_protocol():
    data = json.loads((ROOT / "ci" / "baselines.json").read_text())
    assert data["protocol"] == json.loads(json.dumps(reg.protocol()))
    assert set(data["methods"]) == set(reg.METHODS)
    for entry in data["methods"].values():
        for metric in reg.METRICS:
            assert entry[metric]["tolerance"] >= reg.MIN_TOLERANCE
            assert len(entry[metric]["values"]) >= 3
    assert reg.ordering_by_seed(data) == [], "the shipped baselines break joint >= prompt methods > seq"


def test_ordering_by_seed_names_the_seed_that_breaks_it():
    def entry(*faa):
        return {"faa": {"values": list(faa)}}

    data = {"seeds": [0, 1], "methods": {"hide": entry(0.18, 0.17), "seq": entry(0.12, 0.10),
                                         "joint": entry(0.19, 0.16)}}
    assert reg.ordering_by_seed(data) == [
        "seed 1: ordering: joint FAA 16.00 is below hide FAA 17.00 (joint must be the upper bound)"
    ]


def test_ordering_margins_name_the_closest_methods():
    res = {m: {"faa": v} for m, v in (("hash", 0.17), ("hide", 0.181), ("smope", 0.1475), ("seq", 0.1245),
                                      ("joint", 0.184))}
    assert reg.ordering_margins(res) == (
        "ordering margins (FAA points): joint - hide (best prompt method) = +0.30; "
        "smope (worst prompt method) - seq = +2.30"
    )
    assert reg.ordering_margins({"hash": {"faa": 0.2}}) == ""
