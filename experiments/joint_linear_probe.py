"""The joint linear probe bound on the offline kit: frozen reference-ViT features of all 100
downstream classes at once, a linear head (Adam, full-batch epochs), test accuracy per task and
averaged over tasks (the task-averaged FAA of a model that saw everything at once).

    python experiments/joint_linear_probe.py --train-per-class 100 --test-per-class 50
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> dict:
    import torch

    from avalanche_promptmoe.benchmarks import load_reference_backbone, split_tinyimagenet32
    from avalanche_promptmoe.training.features import extract_features
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
    bm = split_tinyimagenet32(args.kit, n_experiences=10, seed=0, train_per_class=args.train_per_class,
                              test_per_class=args.test_per_class)
    vit = load_reference_backbone(args.kit)

    def feats(stream):
        out = [extract_features(vit, e.dataset.eval(), batch_size=256, device="cpu", desc="features") for e in stream]
        return torch.cat([f for f, _ in out]), torch.cat([y for _, y in out]), [len(y) for _, y in out]

    xtr, ytr, _ = feats(bm.train_stream)
    xte, yte, sizes = feats(bm.test_stream)
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
