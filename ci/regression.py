"""CI accuracy regression on the offline kit: every method, a reduced but fixed protocol, on CPU.

    python ci/regression.py                 # run, compare with ci/baselines.json, exit 1 on regression
    python ci/regression.py --update        # re-measure (3 seeds) and rewrite ci/baselines.json
    python ci/regression.py --update --methods joint   # re-measure one method, keep the others
    python ci/regression.py --methods hash seq --json out.json

Checks (ci/README.md): each figure within its tolerance of the baseline (FAA and CAA not lower,
FFM not higher), the ordering joint ≥ {hash, smope, hlgp, hide} > seq, and determinism (the
determinism method run twice with the same seed gives identical numbers). A crashed method is shown
in the table and fails the run; the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

PROTOCOL_VERSION = 2
METHODS = ("hash", "smope", "hlgp", "hide", "linear", "seq", "joint", "l2p", "dualprompt", "codaprompt")
#: The methods the ordering joint >= each > seq covers (DECISIONS.md §D). The CODA-Prompt code base's
#: baselines (l2p, dualprompt, codaprompt) are checked against their own baselines, not ordered.
PROMPT_METHODS = ("hash", "smope", "hlgp", "hide")
DETERMINISM_METHOD = "hash"
BASELINES = ROOT / "ci" / "baselines.json"
#: The fixed, reduced protocol (ci/README.md). Changing it means a new PROTOCOL_VERSION.
BENCHMARK = dict(n_experiences=10, seed=0, train_per_class=30, test_per_class=20)
STRATEGY = dict(train_mb_size=32, eval_mb_size=256)
#: The phase recipe the v2 baselines were measured with, pinned now that the library defaults are the
#: official ones (cached-feature TII without clipping, a per-class replay draw with weight decay 5e-4,
#: SMoPE's TAP with a per-epoch cosine to 0, our former k-means for the class statistics);
#: docs/methods.md "Recipes" has the official values.
LEGACY_REPLAY = dict(replay_sampling="per_class", replay_weight_decay=5e-4, kmeans="lloyd")
PHASES = dict(tii_epochs=5, tii_replay_epochs=5, tap_epochs=5, samples_per_class=32, tii_input="cached",
              tii_clip_grad=None, **LEGACY_REPLAY)
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "hash": dict(epochs=2, **PHASES),
    "hide": dict(epochs=2, **PHASES),
    "smope": dict(epochs=2, tap_epochs=5, samples_per_class=32, tap_lr_schedule="cosine", tap_lr_min=0.0,
                  **LEGACY_REPLAY),
    "hlgp": dict(epochs=2, tap_epochs=5, samples_per_class=32, **LEGACY_REPLAY),
    "linear": dict(epochs=2),
    "seq": dict(epochs=2),
    "joint": dict(epochs=3, restart=True),  # each step from the initial prompt and head (v2)
    # issue #19: the official CODA-Prompt defaults (docs/methods.md "Recipes"), 2 epochs like the others
    "l2p": dict(epochs=2),
    "dualprompt": dict(epochs=2),
    "codaprompt": dict(epochs=2),
}
METRICS = ("faa", "caa", "ffm")
MUTATIONS = ("none", "penalty-sign", "topk-minus-one", "no-prototype-loss")
MIN_TOLERANCE = 0.01  # absolute floor (1 point of accuracy) under any measured spread
SIGMAS = 3.0


def protocol() -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "benchmark": BENCHMARK, "strategy": STRATEGY, "methods": METHOD_SETTINGS}


def run_method(method: str, seed: int, kit: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """One method on the CI protocol; returns the summary (faa, caa, ffm, time, matrix)."""
    import tempfile

    import torch
    from runner import train_and_evaluate

    from avalanche_promptmoe.kit import load_reference_backbone, split_tinyimagenet32
    from avalanche_promptmoe.methods.registry import get_strategy_class

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    benchmark = split_tinyimagenet32(kit, **BENCHMARK)
    loggers: list[Any] = []
    mlflow_logger = None
    if tracking_uri:
        from avalanche_promptmoe.logging import MLflowLogger

        mlflow_logger = MLflowLogger(
            experiment_name="ci-regression", tracking_uri=tracking_uri, run_name=f"{method}-seed{seed}",
            params={"protocol": protocol(), "method": method, "seed": seed}, tags={"method": method},
        )
        loggers.append(mlflow_logger)
    strategy = get_strategy_class(method)(
        backbone=load_reference_backbone(kit), num_classes=100, seed=seed, device="cpu", loggers=loggers,
        progress=False, **STRATEGY, **METHOD_SETTINGS[method],
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_and_evaluate(strategy, benchmark, Path(tmp))
    summary["mechanisms"] = mechanisms(strategy)
    if mlflow_logger is not None:
        for key in ("faa", "caa", "ffm", "ffm_hide", "wall_time_s"):
            mlflow_logger.log_single_metric(f"final/{key}", float(summary[key]), 0)
        mlflow_logger.close()
    return summary


def apply_mutation(name: str) -> None:
    """Break the library on purpose (in this process only), to show that the regression catches it."""
    if name == "none":
        return
    if name == "penalty-sign":  # Hash's history penalty rewards the frequent experts instead
        import avalanche_promptmoe.methods.hash.model as hash_model

        hash_model.history_penalty = lambda scores, frequent, delta: scores + delta * frequent.to(scores.dtype)
    elif name == "topk-minus-one":  # every router picks K - 1 experts
        import avalanche_promptmoe.methods.hash.model as hash_model
        import avalanche_promptmoe.methods.smope.model as smope_model
        from avalanche_promptmoe.routing import top_k_route

        def fewer(scores: Any, k: int, **kw: Any) -> Any:
            return top_k_route(scores, max(1, k - 1), **kw)

        hash_model.top_k_route = fewer
        smope_model.top_k_route = fewer
    elif name == "no-prototype-loss":
        from avalanche_promptmoe.training.plugins import PrototypeLossPlugin

        PrototypeLossPlugin.before_backward = lambda self, strategy, **kw: None
    else:
        raise SystemExit(f"--mutation: unknown {name!r}; choose from {MUTATIONS}")
    print(f"MUTATION ACTIVE: {name}")


def mechanisms(strategy: Any) -> dict[str, Any]:
    """Deterministic traces of what ran, independent of the seed: total expert selections committed
    (K per sample and prompted layer/head for Hash, per eval pass for SMoPE; top-k per sample for L2P,
    one E-prompt per sample and block for DualPrompt), the training steps that received the prototype
    loss, the phases run per task, and CODA-P's components per layer (all, trainable). A silently
    disabled plugin, phase or a wrong K changes them even when accuracy stays within its noise band."""
    from avalanche_promptmoe.training.plugins import (
        PhaseSchedulerPlugin,
        PrototypeLossPlugin,
        RoutingHistoryPlugin,
    )

    out: dict[str, Any] = {}
    for p in strategy.plugins:
        if isinstance(p, RoutingHistoryPlugin):
            out["expert_selections"] = int(p.usage.counts.sum())
        elif isinstance(p, PrototypeLossPlugin):
            out["prototype_loss_steps"] = int(p.applied_steps)
        elif isinstance(p, PhaseSchedulerPlugin):
            out["phases"] = ["+".join(c) for c in p.completed]
    comp_keys = getattr(strategy.model, "comp_keys", None)  # CODA-P: components per layer, all / trainable
    if comp_keys is not None:
        out["components"] = [sum(c.shape[1] for c in comp_keys), sum(c.shape[1] for c in comp_keys if c.requires_grad)]
    return out


def run_all(methods: list[str], seed: int, kit: str | None, tracking_uri: str | None) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for method in methods:
        t0 = time.perf_counter()
        try:
            s = run_method(method, seed, kit, tracking_uri)
            results[method] = {k: s[k] for k in (*METRICS, "ffm_hide")} | {"time_s": time.perf_counter() - t0,
                                                             "accuracy_matrix": s["accuracy_matrix"],
                                                             "mechanisms": s["mechanisms"]}
        except Exception as err:  # noqa: BLE001 - a crash is a result: show it, keep going, fail at the end
            traceback.print_exc()
            results[method] = {"error": f"{type(err).__name__}: {err}", "time_s": time.perf_counter() - t0}
        print(_row(method, results[method]), flush=True)
    return results


def _row(method: str, r: dict) -> str:
    if "error" in r:
        return f"{method:<8} {'CRASHED':>8} {'':>8} {'':>8} {'':>10} {r['time_s']:>8.0f}  {r['error'][:80]}"
    hide = 100 * r.get("ffm_hide", math.nan)  # HiDe's FFM convention: shown, not checked
    return f"{method:<8} {100 * r['faa']:>8.2f} {100 * r['caa']:>8.2f} {100 * r['ffm']:>8.2f} {hide:>10.2f} {r['time_s']:>8.0f}"


def table(results: dict[str, dict]) -> str:
    head = f"{'method':<8} {'FAA %':>8} {'CAA %':>8} {'FFM %':>8} {'FFM-HiDe %':>10} {'time s':>8}"
    return "\n".join([head, *(_row(m, r) for m, r in results.items())])


def check(results: dict[str, dict], baselines: dict[str, Any], rerun: dict[str, Any] | None) -> list[str]:
    """Every failed check as a readable line (empty: all good)."""
    problems: list[str] = []
    for method, r in results.items():
        if "error" in r:
            problems.append(f"{method}: crashed ({r['error']})")
            continue
        base = baselines["methods"].get(method)
        if base is None:
            problems.append(f"{method}: no baseline; run `python ci/regression.py --update`")
            continue
        for key, expected in base.get("mechanisms", {}).items():
            got = r.get("mechanisms", {}).get(key)
            if got != expected:
                problems.append(f"{method}: mechanism {key} is {got!r}, expected {expected!r} (a plugin, phase or "
                                f"the routing changed what it does)")
        for metric in METRICS:
            value, ref, tol = r[metric], base[metric]["mean"], base[metric]["tolerance"]
            worse = ref - value if metric != "ffm" else value - ref
            if worse > tol:
                direction = "lower" if metric != "ffm" else "higher"
                problems.append(
                    f"{method}: {metric.upper()} {100 * value:.2f} % is {100 * worse:.2f} points {direction} than the "
                    f"baseline {100 * ref:.2f} % (tolerance {100 * tol:.2f})"
                )
    problems += ordering_problems(results)
    if rerun is not None:
        method, first = rerun["method"], results.get(rerun["method"], {})
        second = rerun["result"]
        if "error" in second or "error" in first:
            problems.append(f"determinism: {method} crashed in one of its two runs")
        elif not _same_matrix(first["accuracy_matrix"], second["accuracy_matrix"]) or any(
            first[k] != second[k] for k in METRICS
        ):
            problems.append(
                f"determinism: two runs of {method} with the same seed differ "
                f"(FAA {first['faa']!r} vs {second['faa']!r})"
            )
    return problems


def ordering_problems(results: dict[str, dict]) -> list[str]:
    """The order that must hold (DECISIONS.md §D): joint >= each prompt method > seq (FAA)."""
    problems: list[str] = []
    ok = {m: r for m, r in results.items() if "error" not in r}
    if "joint" in ok:  # the upper bound: joint >= each prompt method (ci/README.md)
        for m in PROMPT_METHODS:
            if m in ok and ok["joint"]["faa"] < ok[m]["faa"]:
                problems.append(
                    f"ordering: joint FAA {100 * ok['joint']['faa']:.2f} is below {m} FAA {100 * ok[m]['faa']:.2f} "
                    f"(joint must be the upper bound)"
                )
    if "seq" in ok:
        for m in PROMPT_METHODS:
            if m in ok and ok[m]["faa"] <= ok["seq"]["faa"]:
                problems.append(f"ordering: {m} FAA {100 * ok[m]['faa']:.2f} does not beat seq {100 * ok['seq']['faa']:.2f}")
    return problems


def _same_matrix(a: list, b: list) -> bool:
    """Bit-identical accuracy matrices (NaN where a task was not evaluated counts as equal)."""
    import numpy as np

    return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)


def load_baselines(path: Path, kit: str | None) -> dict[str, Any]:
    from avalanche_promptmoe.kit import kit_checksums

    if not path.is_file():
        raise SystemExit(f"baselines: {path} is missing; create it with `python ci/regression.py --update`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"baselines: {path} is not valid JSON ({err})") from err
    if data.get("protocol", {}).get("version") != PROTOCOL_VERSION or data.get("protocol") != json.loads(json.dumps(protocol())):
        raise SystemExit(
            f"baselines: {path} was made for protocol version {data.get('protocol', {}).get('version')!r}, this is "
            f"version {PROTOCOL_VERSION} (or the protocol settings differ); re-baseline with --update"
        )
    sums = kit_checksums(kit)
    if data.get("kit_sha256") != sums:
        raise SystemExit(
            f"kit changed: the baselines were measured on kit {data.get('kit_sha256')}, this kit is {sums}; "
            f"this is not a regression — re-baseline with `python ci/regression.py --update`"
        )
    return data


def check_kit(kit: str | None) -> None:
    """A missing or corrupt kit fails loudly (checksums against the known kit v1)."""
    from avalanche_promptmoe.kit import KIT_V1_SHA256, KitError, kit_checksums

    try:
        sums = kit_checksums(kit)
    except (KitError, FileNotFoundError) as err:
        raise SystemExit(f"kit: {err}") from err
    bad = {k: v for k, v in sums.items() if KIT_V1_SHA256.get(k) not in (None, v)}
    if bad and not os.environ.get("AVALANCHE_PROMPTMOE_ALLOW_NEW_KIT"):
        raise SystemExit(
            f"kit: checksums {bad} differ from kit v1 {KIT_V1_SHA256}: the kit is corrupt or was replaced; "
            f"for a new kit set AVALANCHE_PROMPTMOE_ALLOW_NEW_KIT=1 and re-baseline with --update"
        )


def update(methods: list[str], seeds: list[int], kit: str | None, tracking_uri: str | None) -> dict[str, Any]:
    """Measure every method over ``seeds`` and derive tolerances from the spread."""
    from avalanche_promptmoe.kit import kit_checksums

    per_seed = {seed: run_all(methods, seed, kit, tracking_uri) for seed in seeds}
    out: dict[str, Any] = {"protocol": protocol(), "kit_sha256": kit_checksums(kit), "seeds": seeds,
                           "rule": f"tolerance = max({SIGMAS} x sample std over seeds, {MIN_TOLERANCE})",
                           "methods": {}}
    for m in methods:
        runs = [per_seed[s][m] for s in seeds]
        if any("error" in r for r in runs):
            raise SystemExit(f"--update: {m} crashed; fix it before re-baselining")
        entry = {}
        for metric in METRICS:
            vals = [r[metric] for r in runs]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            entry[metric] = {"mean": statistics.fmean(vals), "std": std, "values": vals,
                             "tolerance": max(SIGMAS * std, MIN_TOLERANCE)}
        entry["time_s"] = statistics.fmean(r["time_s"] for r in runs)
        entry["mechanisms"] = seed_independent(m, [r["mechanisms"] for r in runs])
        out["methods"][m] = entry
    return out


def ordering_margins(results: dict[str, dict]) -> str:
    """How much room the ordering has in this run: joint over the best prompt method, the worst
    prompt method over seq (FAA points; negative = broken). Empty when a side is missing."""
    ok = {m: r["faa"] for m, r in results.items() if "error" not in r}
    prompts = {m: ok[m] for m in PROMPT_METHODS if m in ok}
    parts = []
    if "joint" in ok and prompts:
        best = max(prompts, key=prompts.get)
        parts.append(f"joint - {best} (best prompt method) = {100 * (ok['joint'] - prompts[best]):+.2f}")
    if "seq" in ok and prompts:
        worst = min(prompts, key=prompts.get)
        parts.append(f"{worst} (worst prompt method) - seq = {100 * (prompts[worst] - ok['seq']):+.2f}")
    return "ordering margins (FAA points): " + "; ".join(parts) if parts else ""


def ordering_by_seed(data: dict[str, Any]) -> list[str]:
    """The ordering checked on each measured seed of a baselines file: it should hold at every seed,
    not only at the one CI runs."""
    problems = []
    for i, seed in enumerate(data["seeds"]):
        per_method = {m: {"faa": e["faa"]["values"][i]} for m, e in data["methods"].items()
                      if len(e["faa"].get("values", [])) > i}
        problems += [f"seed {seed}: {p}" for p in ordering_problems(per_method)]
    return problems


def seed_independent(method: str, traces: list[dict[str, Any]]) -> dict[str, Any]:
    """The mechanism traces must not depend on the seed; keep them from the first run."""
    if any(t != traces[0] for t in traces[1:]):
        raise SystemExit(f"--update: the mechanism traces of {method} differ between seeds: {traces}")
    return traces[0]


def update_mechanisms(methods: list[str], kit: str | None, path: Path) -> None:
    """Record only the mechanism traces (seed 0) into the existing baselines, keeping the figures."""
    data = load_baselines(path, kit)
    for method in methods:
        r = run_all([method], 0, kit, None)[method]
        if "error" in r:
            raise SystemExit(f"--update-mechanisms: {method} crashed: {r['error']}")
        data["methods"][method]["mechanisms"] = r["mechanisms"]
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update", action="store_true", help="re-measure and rewrite the baselines (deliberate)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for --update")
    p.add_argument("--kit", default=None, help="kit folder (default ../shared/data)")
    p.add_argument("--baselines", default=str(BASELINES))
    p.add_argument("--json", default=str(ROOT / "ci" / "last_run.json"), help="where to write this run's results")
    p.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'ci' / 'mlruns' / 'mlflow.db'}",
                   help="MLflow store ('' to skip)")
    p.add_argument("--no-determinism", action="store_true", help="skip the same-seed rerun")
    p.add_argument("--update-mechanisms", action="store_true",
                   help="record only the mechanism traces (seed 0) into the baselines, keeping the figures")
    p.add_argument("--mutation", default="none", choices=MUTATIONS, help="break the code on purpose (self-test)")
    p.add_argument("--expect-regression", action="store_true",
                   help="exit 0 only if the checks FAIL (to test that the regression still catches breakage)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    check_kit(args.kit)
    apply_mutation(args.mutation)
    if args.update_mechanisms:
        update_mechanisms(args.methods, args.kit, Path(args.baselines))
        print(f"wrote the mechanism traces of {args.methods} to {args.baselines}")
        return 0
    if args.update:
        data = update(args.methods, args.seeds, args.kit, args.tracking_uri or None)
        old_path = Path(args.baselines)
        if set(args.methods) != set(METHODS) and old_path.is_file():
            # a partial update keeps the other methods' figures (their settings must be unchanged)
            old = json.loads(old_path.read_text())
            kept = {m: e for m, e in old.get("methods", {}).items() if m not in args.methods}
            data["methods"] = {m: (data["methods"] | kept)[m] for m in METHODS if m in data["methods"] | kept}
            print(f"kept the baselines of {sorted(kept)} from {old_path}")
        Path(args.baselines).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.baselines} ({time.perf_counter() - t0:.0f} s)")
        for problem in ordering_by_seed(data):
            print(f"WARNING: the ordering fails in the new baselines, {problem}")
        return 0
    baselines = load_baselines(Path(args.baselines), args.kit)
    print(f"CI regression, protocol v{PROTOCOL_VERSION}, seed {args.seed}")
    results = run_all(args.methods, args.seed, args.kit, args.tracking_uri or None)
    rerun = None
    if not args.no_determinism and DETERMINISM_METHOD in args.methods:
        rerun = {"method": DETERMINISM_METHOD,
                 "result": run_all([DETERMINISM_METHOD], args.seed, args.kit, None)[DETERMINISM_METHOD]}
    problems = check(results, baselines, rerun)
    print("\n" + table(results))
    if margins := ordering_margins(results):
        print(margins)
    Path(args.json).write_text(json.dumps({"protocol": protocol(), "seed": args.seed, "results": results,
                                           "problems": problems}, indent=2, default=_nan) + "\n")
    print(f"\nresults: {args.json}  ({time.perf_counter() - t0:.0f} s)")
    if problems:
        print("\nREGRESSION:\n  " + "\n  ".join(problems))
    else:
        print("\nall checks passed")
    if args.expect_regression:
        print("self-test: " + ("the regression caught the mutation" if problems else "NOTHING CAUGHT the mutation"))
        return 0 if problems else 1
    return 1 if problems else 0


def _nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else str(v)


if __name__ == "__main__":
    sys.exit(main())
