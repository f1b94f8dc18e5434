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
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

Distance = Literal["cosine", "euclidean"]
DISTANCES: tuple[Distance, ...] = ("cosine", "euclidean")


def class_means(features: Any, labels: Any, classes: Sequence[int]) -> Any:
    """``(len(classes), D)`` mean training feature of each class, in the order of ``classes``.

    Raises ``ValueError`` naming a class with no training sample."""
    import torch

    means = []
    for c in classes:
        rows = features[labels == c]
        if len(rows) == 0:
            raise ValueError(f"class {c}: no training sample to compute its mean from")
        means.append(rows.double().mean(0))
    return torch.stack(means)


def ncm_predict(features: Any, means: Any, classes: Sequence[int], distance: Distance = "cosine") -> Any:
    """Class id of the nearest mean for each row of ``features (N, D)``; ``means (C, D)`` in the
    order of ``classes``. ``cosine``: largest cosine similarity; ``euclidean``: smallest L2 distance
    (ties towards the earlier class)."""
    import torch

    x = features.double()
    if distance == "cosine":
        score = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(means, dim=1).T
    elif distance == "euclidean":
        score = -torch.cdist(x, means)
    else:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    return torch.as_tensor(list(classes), dtype=torch.long)[score.argmax(1)]


def ncm_accuracy_matrix(train: Sequence[tuple[Any, Any]], test: Sequence[tuple[Any, Any]],
                        classes: Sequence[Sequence[int]], distance: Distance = "cosine") -> Any:
    """Class-incremental NCM: ``A[t, i]`` = accuracy on task ``i``'s test set with the means of the
    classes of tasks ``0..t``; ``(T, T)`` float64, NaN above the diagonal (never evaluated).

    Args:
        train, test: per task, ``(features (N, D), labels (N,))``.
        classes: per task, its class ids.
        distance: ``"cosine"`` or ``"euclidean"``.
    """
    import numpy as np
    import torch

    if not len(train) == len(test) == len(classes):
        raise ValueError(f"train, test, classes: one entry per task, got {len(train)}, {len(test)}, {len(classes)}")
    T = len(classes)
    means = [class_means(x, y, cs) for (x, y), cs in zip(train, classes)]
    acc = np.full((T, T), np.nan)
    for t in range(T):
        seen = [c for cs in classes[: t + 1] for c in cs]
        m = torch.cat(means[: t + 1])
        for i in range(t + 1):
            x, y = test[i]
            acc[t, i] = float((ncm_predict(x, m, seen, distance) == y).double().mean())
    return acc


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
