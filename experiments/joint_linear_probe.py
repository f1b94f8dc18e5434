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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from avalanche_promptmoe.kit.measure import KitFeatures, joint_probe_accuracy, protocol_features  # noqa: E402

__all__ = ["KitFeatures", "kit_features", "main"]


def kit_features(kit: str | None = None, *, train_per_class: int | None, test_per_class: int | None,
                 n_experiences: int = 10, seed: int = 0, batch_size: int = 256,
                 progress: bool = True) -> KitFeatures:
    """The reference ViT's pooled features (eval transform, no prompt) of the kit's Split
    Tiny-ImageNet-32 (``split_tinyimagenet32(kit, n_experiences, seed, train_per_class,
    test_per_class)``, the benchmark the CI protocol and the kit scripts use)."""
    from avalanche_promptmoe.kit import load_reference_backbone, split_tinyimagenet32

    bm = split_tinyimagenet32(kit, n_experiences=n_experiences, seed=seed, train_per_class=train_per_class,
                              test_per_class=test_per_class)
    return protocol_features(bm, load_reference_backbone(kit), batch_size=batch_size, progress=progress)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kit", default=None)
    args = p.parse_args(argv)
    kf = kit_features(args.kit, train_per_class=args.train_per_class, test_per_class=args.test_per_class)
    result = {**joint_probe_accuracy(kf, num_classes=100, epochs=args.epochs, lr=args.lr, seed=args.seed),
              "train_per_class": args.train_per_class, "test_per_class": args.test_per_class}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
