"""Issue #21, item 3: ``predict`` / ``predict_logits`` score images as ``eval`` does (task
identification, seen-class mask), in batches, with no benchmark; ``from_checkpoint`` rebuilds a
trained strategy for inference from its checkpoint alone."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from cl_utils import make_benchmark, tiny_backbone
from strategy_kit import make_tiny_strategy


class EvalOutputs(SupervisedPlugin):
    """Keeps what evaluation scored: ``mb_output`` and the inputs, per mini-batch."""

    checkpoint_stateless = True

    def __init__(self) -> None:
        super().__init__()
        self.x, self.y, self.out, self.t = [], [], [], []

    def after_eval_forward(self, strategy, **kwargs) -> None:
        self.x.append(strategy.mb_x.detach().clone())
        self.y.append(strategy.mb_y.detach().clone())
        if len(strategy.mbatch) >= 3:  # a stream with task labels
            self.t.append(strategy.mbatch[2].detach().clone())
        self.out.append(strategy.mb_output.detach().clone())

    def cat(self):
        return torch.cat(self.x), torch.cat(self.y), torch.cat(self.t) if self.t else None, torch.cat(self.out)


def _trained(name, n_exp=2, **kw):
    bm = make_benchmark(n_exp=3, task_labels=kw.get("use_task_labels", False))
    spy = EvalOutputs()
    s = make_tiny_strategy(name, plugins=[spy], **kw)
    for exp in bm.train_stream[:n_exp]:
        s.train(exp, eval_streams=[])
    s.eval(bm.test_stream)
    return s, spy, bm


@pytest.mark.parametrize("name", ["hash", "smope", "hlgp", "hide", "linear"])
def test_predict_equals_what_eval_scores(name):
    s, spy, _ = _trained(name)
    x, y, _, scored = spy.cat()
    logits = s.predict_logits(x)
    assert torch.equal(logits, scored), f"{name}: predict_logits differs from eval's mb_output"
    pred = s.predict(x)
    assert pred.dtype == torch.int64 and pred.shape == y.shape
    assert set(pred.tolist()) <= set(s.seen_classes), "a prediction in a class never trained"
    torch.testing.assert_close(s.predict_logits(x, batch_size=5), logits)  # any batch size
    assert not s.model.training or s.model.training == s.is_training  # eval mode restored as found


def test_predict_without_identification_would_differ_from_eval():
    """What users tried before (``model(x)``, unmasked logits) scores differently: the API matters."""
    s, spy, _ = _trained("hash")
    x, _, _, scored = spy.cat()
    with torch.no_grad():
        raw = s.model.eval()(x)
    assert not torch.equal(raw.argmax(-1), scored.argmax(-1)) or not torch.equal(raw, scored)
    assert (s.predict_logits(x)[:, 4:] == -1e4).all(), "classes of the untrained experience are masked"


def test_predict_with_task_labels_as_eval():
    s, spy, _ = _trained("hash", use_task_labels=True)
    x, _, t, scored = spy.cat()
    assert torch.equal(s.predict_logits(x, task_labels=t), scored)


def test_predict_refuses_bad_input_and_untrained():
    s = make_tiny_strategy("seq")
    with pytest.raises(RuntimeError, match="nothing trained yet.*from_checkpoint"):
        s.predict(torch.zeros(2, 3, 32, 32))
    s, _, _ = _trained("seq", n_exp=1)
    with pytest.raises(ValueError, match=r"x: expected an image tensor \(N, C, H, W\)"):
        s.predict(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("name", ["hash", "hlgp"])
def test_from_checkpoint_predicts_as_the_trained_strategy(name, tmp_path):
    s, spy, _ = _trained(name)
    x = spy.cat()[0]
    path = s.save_checkpoint(tmp_path / "trained.pt")
    cls = type(s)
    with pytest.raises(ValueError, match="built in code.*pass backbone="):
        cls.from_checkpoint(path)
    loaded = cls.from_checkpoint(path, backbone=tiny_backbone(), device="cpu", loggers=[], progress=False)
    assert loaded.cfg == s.cfg and loaded.seen_classes == s.seen_classes
    assert torch.equal(loaded.predict_logits(x), s.predict_logits(x))
    other = "SequentialPromptStrategy"
    from avalanche_promptmoe import SequentialPromptStrategy

    with pytest.raises(ValueError, match=f"not {other}"):
        SequentialPromptStrategy.from_checkpoint(path, backbone=tiny_backbone())


@pytest.mark.parametrize("task_labels", [False, True])
def test_predict_takes_a_dataset_or_an_experience_as_eval_reads_it(task_labels):
    """``predict(experience)`` / ``predict(dataset)`` score the eval view, in order, as ``eval`` does."""
    s, spy, bm = _trained("hash", use_task_labels=task_labels)
    scored = spy.cat()[3]
    first = scored[: len(bm.test_stream[0].dataset)]
    torch.testing.assert_close(s.predict_logits(bm.test_stream[0]), first, rtol=0, atol=0)
    assert torch.equal(s.predict(bm.test_stream[0].dataset, batch_size=3), first.argmax(-1))
    whole = torch.cat([s.predict_logits(e) for e in bm.test_stream])
    assert torch.equal(whole, scored)


def test_predict_dataset_refuses_what_it_cannot_score():
    s, _, bm = _trained("seq", n_exp=1)
    with pytest.raises(ValueError, match="a dataset brings its own task labels"):
        s.predict(bm.test_stream[0].dataset, task_labels=torch.zeros(3))
    with pytest.raises(ValueError, match="a dataset or an experience, got dict"):
        s.predict({"x": torch.zeros(3, 32, 32)})
    images = [torch.rand(3, 32, 32) for _ in range(5)]  # a list of images is a dataset
    assert torch.equal(s.predict(images), s.predict(torch.stack(images)))
    class Raw(torch.utils.data.Dataset):  # images as nested lists: no ToTensor transform
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(32, 32).tolist(), 0

    with pytest.raises(ValueError, match="first field must batch to image tensors"):
        s.predict(Raw())
