"""Datasets checked where it is cheap: corrupt images named (lazily, or all at once with ``verify=True``),
and Avalanche experiences without ``classes_in_this_experience`` (classes from the targets)."""

from __future__ import annotations

import pytest
import torch
from cl_utils import _dataset, make_images, tiny_backbone

from avalanche_promptmoe import HashPromptStrategy, SequentialPromptStrategy
from avalanche_promptmoe.training.experience import experience_classes

# ----------------------------------------------------------------------- experiences without classes


def _from_datasets_benchmark(n_exp: int = 2, per_exp: int = 2):
    """Two experiences built with Avalanche's ``benchmark_from_datasets``: no ``classes_in_this_experience``."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset

    n = n_exp * per_exp
    xtr, ytr = make_images(n, 12, seed=1)
    xte, yte = make_images(n, 6, seed=2)

    def part(x, y, e):
        keep = (y // per_exp) == e
        return as_classification_dataset(_dataset(x[keep], y[keep]))

    return benchmark_from_datasets(train=[part(xtr, ytr, e) for e in range(n_exp)],
                                   test=[part(xte, yte, e) for e in range(n_exp)])


def test_experience_classes_from_targets_when_the_attribute_is_absent():
    bm = _from_datasets_benchmark()
    exp = bm.train_stream[1]
    assert not hasattr(exp, "classes_in_this_experience")  # what made the strategies fail
    assert experience_classes(exp) == [2, 3]
    from types import SimpleNamespace

    assert experience_classes(SimpleNamespace(classes_in_this_experience={5, 1})) == [1, 5]
    assert experience_classes(SimpleNamespace(dataset=SimpleNamespace(targets=torch.tensor([3, 3, 0])))) == [0, 3]
    with pytest.raises(TypeError, match="neither classes_in_this_experience nor dataset.targets"):
        experience_classes(SimpleNamespace(current_experience=4, dataset=[1, 2]))


@pytest.mark.parametrize("cls", [SequentialPromptStrategy, HashPromptStrategy])
def test_strategies_train_on_benchmark_from_datasets(cls):
    kw = dict(layers=(0, 1), length=2, lr=0.01)
    if cls is HashPromptStrategy:
        kw.update(num_experts=4, top_k=2, tii_epochs=1, tii_replay_epochs=1, tap_epochs=1, samples_per_class=8,
                  n_centroids=2, tap_centroids=2)
    s = cls(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1, device="cpu", loggers=[],
            progress=False, seed=0, **kw)
    bm = _from_datasets_benchmark()
    for i, exp in enumerate(bm.train_stream):
        s.train(exp, eval_streams=[])
        s.eval(bm.test_stream[: i + 1])
    assert s.task_classes == [[0, 1], [2, 3]]
    assert s.class_to_task == {0: 0, 1: 0, 2: 1, 3: 1}
