"""Issue 14 item 3: Avalanche's stock metrics read right with our strategies — finite, comparable
evaluation losses (the −1e4 prediction mask never reaches the loss), unchanged predictions, and
training accuracy over the classes the training loss admits."""

from __future__ import annotations

import math

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.training.plugins import EvaluationPlugin
from cl_utils import FAST_HIDE, make_benchmark, tiny_backbone

from avalanche_promptmoe import HashPromptStrategy, LinearProbeStrategy
from avalanche_promptmoe.engine import mask_logits


def _evaluator():
    return EvaluationPlugin(
        accuracy_metrics(minibatch=True, epoch=True, experience=True, stream=True),
        loss_metrics(epoch=True, experience=True, stream=True), loggers=[],
    )


def test_eval_loss_is_finite_on_untrained_experiences_and_predictions_stay_masked():
    bench = make_benchmark(n_exp=3, classes_per_exp=2, per_class=12, test_per_class=8)
    s = LinearProbeStrategy(backbone=tiny_backbone(), num_classes=6, train_mb_size=8, train_epochs=2,
                            device="cpu", evaluator=_evaluator(), progress=False, lr=0.05)
    outputs = []

    class Spy(SupervisedPlugin):
        def after_eval_forward(self, strategy, **kw):
            outputs.append((strategy.mb_output.detach().clone(), getattr(strategy, "mb_logits", None)))

    s.plugins.append(Spy())
    s.train(bench.train_stream[0])
    res = s.eval(bench.test_stream)
    losses = [next(v for k, v in res.items() if k.startswith("Loss_Exp/eval_phase/test") and k.endswith(f"Exp00{i}"))
              for i in range(3)]
    assert all(math.isfinite(v) and 0 < v < 50 for v in losses), losses  # was ~1e4 on exps 1, 2
    assert losses[0] < min(losses[1:])  # the trained experience has the lowest loss: comparable
    assert math.isfinite(next(v for k, v in res.items() if k.startswith("Loss_Stream/eval_phase/test")))
    # predictions: still masked to the seen classes, so untrained experiences score 0
    assert next(v for k, v in res.items() if k.startswith("Top1_Acc_Exp/eval_phase/test") and k.endswith("Exp001")) == 0
    # on the trained experience the loss is the cross-entropy over the seen classes, as before
    x, y = (torch.stack(t) for t in zip(*[bench.test_stream[0].dataset[i][:2] for i in range(16)]))
    s.model.eval()
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(mask_logits(s.model(x), seen_mask(6, [0, 1])), y.long())
    assert abs(losses[0] - float(ce)) < 1e-4
    for out, raw in outputs:
        assert torch.equal(out, mask_logits(raw, seen_mask(6, [0, 1])))


def seen_mask(n: int, classes: list[int]) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[classes] = True
    return mask


def test_training_accuracy_is_over_the_admitted_classes():
    bench = make_benchmark(n_exp=2, classes_per_exp=2, per_class=16, test_per_class=4)
    s = HashPromptStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=2, device="cpu",
                           evaluator=_evaluator(), progress=False, layers=(0, 1), num_experts=4, top_k=2, **FAST_HIDE)
    preds, accs = [], []

    class Spy(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kw):
            if strategy.trained_experiences == 1:
                p = strategy.mb_output.argmax(1)
                preds.append(p)
                accs.append(float((p == strategy.mb_y).float().mean()))

    s.plugins.append(Spy())
    s.train(bench.train_stream[0])
    res = s.train(bench.train_stream[1])
    assert preds and set(torch.cat(preds).tolist()) <= {2, 3}  # never an old class: it is not in the loss
    # the stock per-minibatch accuracy is this accuracy (last minibatch of the experience)
    mb_key = next(k for k in res if k.startswith("Top1_Acc_MB/train_phase"))
    assert abs(res[mb_key] - accs[-1]) < 1e-6
