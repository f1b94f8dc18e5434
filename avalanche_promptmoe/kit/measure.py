"""Measuring a kit's figures: the backbone's transfer (``measured`` in the JSON) and the protocol
bounds (``kit_bounds.json``). Imports the training code lazily, as an experiment script would: the
kit's core modules do not depend on it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from avalanche_promptmoe.kit.bounds import ncm_accuracy_matrix

__all__ = ["KitFeatures", "protocol_features", "joint_probe_accuracy", "ncm_faa", "seq_faa", "transfer_accuracies",
           "protocol_bounds"]


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


def protocol_features(benchmark: Any, vit: Any, *, device: str = "cpu", batch_size: int = 256,
                      progress: bool = True) -> KitFeatures:
    """The frozen backbone's pooled features (eval transform, no prompt) of every experience."""
    from avalanche_promptmoe.training.features import extract_features

    vit = vit.to(device)

    def feats(stream: Any) -> list[tuple[Any, Any]]:
        return [extract_features(vit, e.dataset.eval(), batch_size=batch_size, device=device, desc="features",
                                 progress=progress) for e in stream]

    classes = [sorted(int(c) for c in e.classes_in_this_experience) for e in benchmark.train_stream]
    return KitFeatures(feats(benchmark.train_stream), feats(benchmark.test_stream), classes,
                       list(benchmark.class_order))


def joint_probe_accuracy(kf: KitFeatures, *, num_classes: int, epochs: int = 30, lr: float = 1e-3,
                         seed: int = 0) -> dict[str, Any]:
    """A linear head (Adam, batch 256) on the features of all experiences at once; its test accuracy
    per task, task-averaged and sample-weighted."""
    from avalanche_promptmoe.training.phases import train_head_on_features

    torch.manual_seed(seed)
    xtr, ytr = (torch.cat(t) for t in zip(*kf.train))
    xte, yte = (torch.cat(t) for t in zip(*kf.test))
    sizes = [len(y) for _, y in kf.test]
    head = torch.nn.Linear(xtr.shape[1], num_classes)
    g = torch.Generator().manual_seed(seed)
    train_head_on_features(head, xtr, ytr, classes=range(num_classes), num_classes=num_classes, epochs=epochs,
                           lr=lr, batch_size=256, generator=g)
    with torch.no_grad():
        correct = (head(xte).argmax(1) == yte).float()
    per_task = [float(c.mean()) for c in torch.split(correct, sizes)]
    return {"task_averaged_accuracy": sum(per_task) / len(per_task), "sample_weighted_accuracy": float(correct.mean()),
            "per_task": per_task}


def ncm_faa(kf: KitFeatures) -> float:
    """FAA of the class-incremental cosine NCM (the mean of its accuracy matrix's last row)."""
    return float(ncm_accuracy_matrix(kf.train, kf.test, kf.classes, "cosine")[-1].mean())


def seq_faa(benchmark: Any, vit: Any, *, num_classes: int, epochs: int, train_mb_size: int, eval_mb_size: int,
            seed: int = 0, device: str = "cpu", progress: bool = True) -> float:
    """FAA of the ``seq`` method (sequential fine-tuning of the prompt and head) on ``benchmark``."""
    from avalanche_promptmoe.logging.strategy_info import final_metrics
    from avalanche_promptmoe.methods.registry import get_strategy_class

    strategy = get_strategy_class("seq")(backbone=vit, num_classes=num_classes, seed=seed, device=device,
                                         progress=progress, loggers=[], train_mb_size=train_mb_size,
                                         eval_mb_size=eval_mb_size, epochs=epochs)
    for i, exp in enumerate(benchmark.train_stream):
        strategy.train(exp, eval_streams=[])
        strategy.eval(benchmark.test_stream[: i + 1])
    final = final_metrics(strategy)
    if final is None:
        raise RuntimeError("seq bound: the accuracy matrix is incomplete after the last experience")
    return float(final[0]["faa"])


def transfer_accuracies(model: Any, x_train: Any, y_train: Any, x_val: Any, y_val: Any, *, num_classes: int,
                        device: str = "cpu", probe_steps: int = 3000, seed: int = 0) -> dict[str, float]:
    """Kit v1's transfer check on uint8 downstream images (all of them): a linear probe (Adam lr 1e-3,
    weight decay 1e-4, ``probe_steps`` steps of 1024 random samples) and the cosine NCM, both on
    standardized frozen [CLS] features; ``{"downstream_linear_probe_acc", "downstream_ncm_acc"}``."""
    from avalanche_promptmoe.kit.pretrain import pooled_features

    ftr, fva = pooled_features(model, x_train, device=device), pooled_features(model, x_val, device=device)
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fva = (ftr - mean) / std, (fva - mean) / std
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(ftr.shape[1], num_classes)
    opt = torch.optim.Adam(lin.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(probe_steps):
        idx = torch.randint(0, len(ftr), (1024,), generator=g)
        loss = F.cross_entropy(lin(ftr[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        probe = float((lin(fva).argmax(1) == y_val).float().mean())
    means = torch.stack([ftr[y_train == c].mean(0) for c in range(num_classes)])
    ncm = float(((F.normalize(fva, dim=1) @ F.normalize(means, dim=1).T).argmax(1) == y_val).float().mean())
    return {"downstream_linear_probe_acc": probe, "downstream_ncm_acc": ncm}


def protocol_bounds(kit_dir: str | os.PathLike, protocol: Mapping[str, Any], *, seq: Mapping[str, int] | None,
                    device: str = "cpu", probe_epochs: int = 30, progress: bool = True) -> dict[str, Any]:
    """Measure the bounds of a kit folder under ``protocol`` (:data:`~avalanche_promptmoe.kit.bounds.PROTOCOL_KEYS`):
    ``{"bounds": {"ncm", "joint_probe"[, "seq"]}, "tar_sha256", "n_classes"}``. ``seq`` holds the seq
    run's ``epochs``, ``train_mb_size``, ``eval_mb_size`` (``None`` = no seq run)."""
    from avalanche_promptmoe.kit.backbone import load_reference_backbone
    from avalanche_promptmoe.kit.benchmark import split_tinyimagenet32

    bm = split_tinyimagenet32(kit_dir, **protocol)
    n_classes = len(bm.protocol["wnids"])
    vit = load_reference_backbone(kit_dir)
    kf = protocol_features(bm, vit, device=device, progress=progress)
    bounds = {"ncm": ncm_faa(kf),
              "joint_probe": joint_probe_accuracy(kf, num_classes=n_classes, epochs=probe_epochs)["task_averaged_accuracy"]}
    if seq is not None:
        bounds["seq"] = seq_faa(bm, vit, num_classes=n_classes, seed=int(protocol.get("seed", 0)), device=device,
                                progress=progress, **seq)
    return {"bounds": bounds, "tar_sha256": bm.protocol["tar_sha256"], "n_classes": n_classes}
