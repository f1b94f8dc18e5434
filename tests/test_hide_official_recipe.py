"""HiDe-Prompt's official-recipe mode (issue #17) on a tiny run: what ``recipe="official"`` requires,
virtual ranks in the replays, the per-rank lr rule, scikit-learn's KMeans for the class statistics,
unmasked evaluation. The maths of each item is checked against the official code's outputs in
tests/test_conformance_hide.py."""

from __future__ import annotations

import pytest
import torch
from cl_utils import make_benchmark, record_optimizers, tiny_backbone

from avalanche_promptmoe import HiDePromptStrategy
from avalanche_promptmoe.methods.baselines.config import HiDeBaselineConfig
from avalanche_promptmoe.training import phases
from avalanche_promptmoe.training.phases import ClassGaussians
from avalanche_promptmoe.training.sklearn_kmeans import sklearn_kmeans

OFFICIAL = dict(recipe="official", **HiDeBaselineConfig.OFFICIAL)
TINY = dict(layers=(0, 1), length=2, n_centroids=2, tap_centroids=2, tii_epochs=1, tii_replay_epochs=1, tap_epochs=1,
            num_classes=6, train_epochs=1, device="cpu", loggers=[], progress=False)


def test_official_recipe_refuses_items_left_at_ours():
    with pytest.raises(ValueError, match=r"prefix_layout.*hide_official"):
        HiDeBaselineConfig(recipe="official")
    assert HiDeBaselineConfig(**OFFICIAL).prefix_layout == "hide_official"
    # ours may take any item on its own (ablations); Hash has no official code
    assert HiDeBaselineConfig(prefix_layout="hide_official").recipe == "ours"


def test_world_size_must_divide_the_global_batch():
    s = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=10, world_size=4, **TINY)
    with pytest.raises(ValueError, match="not a multiple of world_size"):
        s.rank_batch()


def test_official_recipe_on_a_tiny_run(monkeypatch):
    """Two virtual ranks of 4: WTP at lr × 4/256, replays drawing per rank (TAP 2 × 20 samples per
    iteration, TII replay 2 × 4), statistics by scikit-learn (ours never runs), predictions unmasked."""
    made = record_optimizers(monkeypatch, "Adam", "SGD")

    def ours_must_not_run(*_a, **_k):
        raise AssertionError("kmeans='sklearn' ran our k-means")

    monkeypatch.setattr(phases, "kmeans", ours_must_not_run)
    s = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=8, lr=0.03, world_size=2, **OFFICIAL, **TINY)
    sizes = {"head": [], "tii": []}
    s.model.head.register_forward_hook(lambda _m, i, _o: sizes["head"].append(i[0].shape[0]))
    s.model.tii.register_forward_hook(lambda _m, i, _o: sizes["tii"].append(i[0].shape[0]))
    bench = make_benchmark(n_exp=2, classes_per_exp=3, per_class=8)
    s.train(bench.train_stream[0], eval_streams=[])
    outputs, forward = [], s.forward

    def recorded():
        out = forward()
        if not s.is_training:
            outputs.append((out, s.mb_logits))
        return out

    s.forward = recorded
    s.eval(bench.test_stream[:1])  # classes 3-5 not seen yet: the official evaluation does not mask them
    assert outputs and all(torch.equal(out, logits) and out[:, 3:].gt(-1e3).all() for out, logits in outputs)
    sizes = {"head": [], "tii": []}
    s.train(bench.train_stream[1], eval_streams=[])
    wtp = [o for o in made if isinstance(o, torch.optim.Adam) and any(g.get("name") == "prompts" for g in o.param_groups)]
    assert wtp and wtp[-1].param_groups[0]["initial_lr"] == pytest.approx(0.03 * 4 / 256)
    assert 2 * 20 in sizes["head"] and 2 * 4 in sizes["tii"]  # TAP: 2 ranks × int(4 × 5); TII replay: 2 × 4



def test_sklearn_kmeans_finds_separated_blobs_and_fits_float64_means():
    """The official clustering (10 starts) separates 10 blobs; ``fit`` keeps float32 statistics."""
    g = torch.Generator().manual_seed(0)
    centres = 20 * torch.randn(10, 8, generator=g)
    x = (centres.repeat_interleave(30, 0) + torch.randn(300, 8, generator=g))
    means, labels = sklearn_kmeans(x, 10, generator=torch.Generator().manual_seed(1))
    assert means.dtype == torch.float64 and means.shape == (10, 8)
    truth = torch.arange(10).repeat_interleave(30)
    assert all(len(labels[truth == c].unique()) == 1 for c in range(10))  # every blob one cluster
    assert len(labels.unique()) == 10
    stats = ClassGaussians()
    stats.fit(x, torch.zeros(300, dtype=torch.long), n_centroids=10, generator=torch.Generator().manual_seed(1),
              method="sklearn")
    assert stats.means[0].dtype == torch.float32 and stats.means[0].shape == (10, 8)
