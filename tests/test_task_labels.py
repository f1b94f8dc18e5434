"""Issue #13 item 5: task labels. Out-of-range task ids are a clear ValueError; in the README loop
(evaluate the whole test stream after each experience) experiences not trained yet are evaluated as
without task labels; a stream without task labels warns once."""

from __future__ import annotations

import warnings

import pytest
import torch
from cl_utils import FAST_HIDE, make_benchmark, tiny_backbone

from avalanche_promptmoe import (
    HashPromptStrategy,
    HiDePromptStrategy,
    JointPromptStrategy,
    LayerGroupedPromptStrategy,
    LinearProbeStrategy,
    SequentialPromptStrategy,
    SMoPEStrategy,
)

COMMON = dict(num_classes=6, train_mb_size=16, train_epochs=1, device="cpu", loggers=[], progress=False)
SMALL = {
    HashPromptStrategy: dict(layers=(0, 1), num_experts=4, length=2, top_k=2, **FAST_HIDE),
    HiDePromptStrategy: dict(layers=(0, 1), length=2, **FAST_HIDE),
    SMoPEStrategy: dict(layers=(0, 1), num_experts=4, top_k=2, tap_epochs=1, samples_per_class=8),
    LayerGroupedPromptStrategy: dict(layers=(0, 1), groups=((0,), (1,)), length=2, rank=4, tap_epochs=1,
                                     samples_per_class=8, tap_centroids=1),
    LinearProbeStrategy: {},
    SequentialPromptStrategy: dict(layers=(0, 1), length=2),
    JointPromptStrategy: dict(layers=(0, 1), length=2),
}
TASK_ID_METHODS = [HashPromptStrategy, HiDePromptStrategy, LayerGroupedPromptStrategy]


def make(cls, **kw):
    return cls(backbone=tiny_backbone(), seed=0, **{**COMMON, **SMALL[cls], **kw})


@pytest.fixture(scope="module")
def labelled():
    return make_benchmark(n_exp=2, task_labels=True)


@pytest.mark.parametrize("cls", list(SMALL), ids=lambda c: c.method_name)
def test_readme_loop_with_task_labels_evaluates_untrained_experiences_without_them(cls, labelled):
    s = make(cls, use_task_labels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a labelled stream: no "no task labels" warning
        s.train(labelled.train_stream[0], eval_streams=[])
        s.eval(labelled.test_stream)  # experience 1 (label 1) not trained yet: no IndexError
    assert s.task_label_map.label_to_task == {0: 0}
    x = torch.stack([labelled.test_stream[1].dataset[i][0] for i in range(6)])
    s.model.eval()
    with torch.no_grad():
        untrained = s._predict_with_task_labels(x, torch.ones(6, dtype=torch.long))
        torch.testing.assert_close(untrained, s.inference_logits(x, None).float())
        mixed = s._predict_with_task_labels(x, torch.tensor([0, 1, 0, 1, 0, 1]))
        oracle = s.inference_logits(x, torch.zeros(6, dtype=torch.long)).float()
    torch.testing.assert_close(mixed[0::2], oracle[0::2])  # trained experience: its oracle task id
    torch.testing.assert_close(mixed[1::2], untrained[1::2])
    s.train(labelled.train_stream[1], eval_streams=[])
    s.eval(labelled.test_stream)
    assert s.task_label_map.label_to_task == {0: 0, 1: 1}


@pytest.mark.parametrize("cls", TASK_ID_METHODS, ids=lambda c: c.method_name)
def test_out_of_range_task_ids_are_a_clear_error(cls, labelled):
    s = make(cls)
    s.train(labelled.train_stream[0], eval_streams=[])
    x = torch.stack([labelled.test_stream[0].dataset[i][0] for i in range(2)])
    s.model.eval()
    with pytest.raises(ValueError, match=r"task ids? \[?-1\]? (is|are) outside the 1 task\(s\)"):
        s.inference_logits(x, torch.tensor(-1) if cls is LayerGroupedPromptStrategy else -1)
    with pytest.raises(ValueError, match=r"task ids \[-1, 3\] are outside the 1 task\(s\)"):
        s.inference_logits(x, torch.tensor([3, -1]))
    with pytest.raises(ValueError, match=r"task ids \[1\] are outside"):
        s.inference_logits(x, torch.tensor([0, 1]))  # a task not trained yet


@pytest.mark.parametrize("task_labels_kind", ["none", "all_zero"])
def test_task_labels_on_a_stream_without_them_warn_once(task_labels_kind):
    if task_labels_kind == "none":  # Avalanche's class_incremental_benchmark: batches of (x, y)
        bm = make_benchmark(n_exp=2)
    else:  # nc_benchmark(task_labels=False): every experience has task label 0
        from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
        from cl_utils import _dataset, make_images

        tr, te = _dataset(*make_images(4, 8, seed=1)), _dataset(*make_images(4, 4, seed=2))
        bm = nc_benchmark(tr, te, 2, task_labels=False, fixed_class_order=[0, 1, 2, 3])
    s = make(SequentialPromptStrategy, use_task_labels=True)
    with pytest.warns(UserWarning, match="the stream has no task labels") as record:
        for exp in bm.train_stream:
            s.train(exp, eval_streams=[])
            s.eval(bm.test_stream)
    assert sum("no task labels" in str(w.message) for w in record) == 1
    assert not s.task_label_map.usable
