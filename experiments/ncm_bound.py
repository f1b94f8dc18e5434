"""A training-free bound on the offline kit: the nearest-class-mean (NCM) classifier on frozen,
unprompted reference-ViT features, in the class-incremental sense.

After task t every class seen so far is represented by the mean of its training features (means are
computed once, when the class arrives, and never change: nothing is trained); each test sample of
tasks 0..t goes to the nearest mean. That gives an accuracy matrix and FAA / CAA / FFM (both
conventions) like any method. The last row is also the joint NCM (all classes at once), since the
means do not depend on the order they arrived in. A prompt method that falls below this bound has
made the frozen features worse for the old classes than doing nothing.

    python experiments/ncm_bound.py --train-per-class 30 --test-per-class 20    # CI protocol
    python experiments/ncm_bound.py --train-per-class 100 --test-per-class 50 --json ncm.json

Features come from ``joint_linear_probe.kit_features`` (the same ones the joint linear probe uses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from avalanche_promptmoe.kit.bounds import (  # noqa: E402  (re-exported: the NCM lives with the kit)
    Distance,
    class_means,
    ncm_accuracy_matrix,
    ncm_predict,
)

__all__ = ["DISTANCES", "class_means", "ncm_predict", "ncm_accuracy_matrix", "ncm_report", "main"]
DISTANCES: tuple[Distance, ...] = ("cosine", "euclidean")


def ncm_report(train: Sequence[tuple[Any, Any]], test: Sequence[tuple[Any, Any]],
               classes: Sequence[Sequence[int]], distances: Sequence[Distance] = DISTANCES) -> dict[str, Any]:
    """Per distance: the accuracy matrix, its FAA / CAA / FFM / FFM (HiDe), and the joint NCM
    (task-averaged = the last row's mean = FAA; sample-weighted over all test samples)."""
    from avalanche_promptmoe.metrics import summarize

    out: dict[str, Any] = {}
    for d in distances:
        acc = ncm_accuracy_matrix(train, test, classes, d)
        sizes = [len(y) for _, y in test]
        weighted = sum(a * n for a, n in zip(acc[-1], sizes)) / sum(sizes)
        out[d] = {**summarize(acc), "joint_task_averaged": float(acc[-1].mean()),
                  "joint_sample_weighted": float(weighted), "accuracy_matrix": acc.tolist()}
    return out


def main(argv: list[str] | None = None) -> dict:
    from joint_linear_probe import kit_features

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--n-experiences", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="class-order seed of the benchmark (the CI protocol uses 0)")
    p.add_argument("--distance", nargs="+", default=list(DISTANCES), choices=DISTANCES)
    p.add_argument("--kit", default=None)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    kf = kit_features(args.kit, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                      n_experiences=args.n_experiences, seed=args.seed)
    result = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
              "n_experiences": args.n_experiences, "seed": args.seed,
              **ncm_report(kf.train, kf.test, kf.classes, args.distance)}
    brief = {d: {k: round(v, 4) for k, v in r.items() if k != "accuracy_matrix"} for d, r in result.items()
             if d in DISTANCES}
    print(json.dumps(brief, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
