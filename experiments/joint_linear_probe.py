"""The joint linear probe bound on the offline kit: frozen reference-ViT features of all 100
downstream classes at once, a linear head (Adam, full-batch epochs), test accuracy per task and
averaged over tasks (the task-averaged FAA of a model that saw everything at once).

    python experiments/joint_linear_probe.py --train-per-class 100 --test-per-class 50
    python experiments/joint_linear_probe.py --train-per-class 30 --test-per-class 20   # CI protocol

``kit_features`` (the frozen, unprompted features of every experience) is shared with
``experiments/ncm_bound.py``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class KitFeatures:
    """Frozen features of a class-incremental kit benchmark, per experience (in stream order).

    Attributes:
        train, test: per experience, ``(features (N, D) float32, labels (N,) int64)`` on CPU.
        classes: per experience, its class ids (sorted).
        class_order: the benchmark's class order.
    """

    train: list[tuple[Any, Any]]
    test: list[tuple[Any, Any]]
    classes: list[list[int]]
    class_order: list[int]


def kit_features(kit: str | None = None, *, train_per_class: int | None, test_per_class: int | None,
                 n_experiences: int = 10, seed: int = 0, batch_size: int = 256,
                 progress: bool = True) -> KitFeatures:
    """The reference ViT's pooled features (eval transform, no prompt) of the kit's Split
    Tiny-ImageNet-32 (``split_tinyimagenet32(kit, n_experiences, seed, train_per_class,
    test_per_class)``, the benchmark the CI protocol and the kit scripts use)."""
    from avalanche_promptmoe.benchmarks import load_reference_backbone, split_tinyimagenet32
    from avalanche_promptmoe.training.features import extract_features

    bm = split_tinyimagenet32(kit, n_experiences=n_experiences, seed=seed, train_per_class=train_per_class,
                              test_per_class=test_per_class)
    vit = load_reference_backbone(kit)

    def feats(stream: Any) -> list[tuple[Any, Any]]:
        return [extract_features(vit, e.dataset.eval(), batch_size=batch_size, device="cpu", desc="features",
                                 progress=progress) for e in stream]

    classes = [sorted(int(c) for c in e.classes_in_this_experience) for e in bm.train_stream]
    return KitFeatures(feats(bm.train_stream), feats(bm.test_stream), classes, list(bm.class_order))


def main(argv: list[str] | None = None) -> dict:
    import torch

    from avalanche_promptmoe.training.phases import train_head_on_features

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kit", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    kf = kit_features(args.kit, train_per_class=args.train_per_class, test_per_class=args.test_per_class)
    xtr, ytr = (torch.cat(t) for t in zip(*kf.train))
    xte, yte = (torch.cat(t) for t in zip(*kf.test))
    sizes = [len(y) for _, y in kf.test]
    head = torch.nn.Linear(xtr.shape[1], 100)
    g = torch.Generator().manual_seed(args.seed)
    train_head_on_features(head, xtr, ytr, classes=range(100), num_classes=100, epochs=args.epochs, lr=args.lr,
                           batch_size=256, generator=g)
    with torch.no_grad():
        correct = (head(xte).argmax(1) == yte).float()
    per_task = [float(c.mean()) for c in torch.split(correct, sizes)]
    result = {"task_averaged_accuracy": sum(per_task) / len(per_task), "sample_weighted_accuracy": float(correct.mean()),
              "per_task": per_task, "train_per_class": args.train_per_class, "test_per_class": args.test_per_class}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
