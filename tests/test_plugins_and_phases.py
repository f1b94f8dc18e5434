"""The plugins' plain functions (losses, phases) and the plugins' state round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from avalanche_promptmoe.routing import ExpertUsage
from avalanche_promptmoe.training.losses import prototype_loss, router_margin_loss
from avalanche_promptmoe.training.phases import (
    ClassGaussians,
    contrastive_regulariser,
    kmeans,
    train_head_on_features,
    train_head_on_gaussians,
)
from avalanche_promptmoe.training.plugins import (
    GradientScalingPlugin,
    PhaseSchedulerPlugin,
    PrototypeLossPlugin,
    RoutingHistoryPlugin,
)


def test_kmeans_finds_separated_clusters_and_clamps_k():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    x = centers.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=g)
    c, assign = kmeans(x, 3, generator=torch.Generator().manual_seed(1))
    found = sorted(map(tuple, c.round().tolist()))
    assert found == sorted(map(tuple, centers.tolist()))
    assert len(set(assign[:20].tolist())) == 1 and assign[0] != assign[20]
    c2, _ = kmeans(x[:3], 10)  # k > N: min(k, N) centroids (DECISIONS.md §C7)
    assert c2.shape == (3, 2)


def test_class_gaussians_fit_sample_and_state():
    g = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(50, 4, generator=g) + 5, torch.randn(50, 4, generator=g) - 5])
    labels = torch.tensor([3] * 50 + [7] * 50)
    stats = ClassGaussians()
    stats.fit(feats, labels, n_centroids=1, generator=g)
    assert stats.classes == [3, 7]
    torch.testing.assert_close(stats.means[3][0], feats[:50].mean(0))
    x, y = stats.sample([3, 7], 200, torch.Generator().manual_seed(2))
    assert x.shape == (400, 4) and (y[:200] == 3).all()
    assert (x[:200].mean(0) - 5).abs().max() < 0.5 and (x[200:].mean(0) + 5).abs().max() < 0.5
    clone = ClassGaussians()
    clone.load_state_dict(stats.state_dict())
    assert torch.equal(clone.prototypes(), stats.prototypes())


def test_heads_learn_from_features_and_from_gaussians():
    g = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(40, 8, generator=g) + 2, torch.randn(40, 8, generator=g) - 2])
    labels = torch.tensor([0] * 40 + [1] * 40)
    head = torch.nn.Linear(8, 5)
    train_head_on_features(head, feats, labels, classes=[0, 1], num_classes=5, epochs=20, lr=0.05, generator=g)
    assert (head(feats)[:, :2].argmax(1) == labels).float().mean() > 0.95
    stats = ClassGaussians()
    stats.fit(feats, labels, n_centroids=2, generator=g)
    head2 = torch.nn.Linear(8, 5)
    train_head_on_gaussians(head2, stats, classes=[0, 1], num_classes=5, epochs=10, lr=0.05,
                            samples_per_class=64, generator=g)
    assert (head2(feats)[:, :2].argmax(1) == labels).float().mean() > 0.95


def test_contrastive_regulariser_matches_definition_and_pushes_apart():
    f = torch.randn(6, 4, requires_grad=True)
    protos = torch.randn(3, 4)
    m = torch.cat([protos, f])
    expected = F.cross_entropy(m @ m.T / 0.8, torch.arange(9))
    torch.testing.assert_close(contrastive_regulariser(f, protos, 0.8), expected)
    contrastive_regulariser(f, protos).backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tau"):
        contrastive_regulariser(f, protos, 0.0)


@given(seed=st.integers(0, 1000), k=st.integers(1, 3))
def test_prototype_loss_is_minimal_when_keys_are_unchanged(seed, k):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(5, 2, 4, generator=g)
    frequent = torch.ones(2, 5, dtype=torch.bool)
    same = prototype_loss(old, frequent, old.clone(), k)
    moved = prototype_loss(old, frequent, old + 3 * torch.randn(5, 2, 4, generator=g), k)
    assert torch.isfinite(same) and torch.isfinite(moved)
    none = prototype_loss(old, torch.zeros(2, 5, dtype=torch.bool), old, k)
    assert none.item() == 0.0


def test_prototype_loss_against_a_hand_computation():
    old = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # (E=3, H=1, Dh=2)
    cur = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]])
    frequent = torch.tensor([[True, False, False]])  # only expert 0's old key is a prototype
    # old key 0 = (1, 0): scores vs old keys = (1, 0, 1) → top-1 = expert 0 (ties → lower index)
    # logits vs current keys = (2, 0, 0) → CE against 0 = -log softmax = log(e² + 2) - 2
    expected = torch.log(torch.exp(torch.tensor(2.0)) + 2) - 2
    torch.testing.assert_close(prototype_loss(old, frequent, cur, 1), expected)


def test_router_margin_loss_prefers_selected_experts():
    scores = torch.tensor([[[3.0, 1.0, 0.0]]])
    idx = torch.tensor([[[0]]])
    plain = F.cross_entropy(scores.view(1, 3), torch.tensor([0]))
    assert router_margin_loss(scores, idx, 0.0).item() == pytest.approx(plain.item())
    assert router_margin_loss(scores, idx, 0.5) > plain  # the margin raises the rivals


class _Strategy:
    """The attributes the plugins read, without Avalanche's loop."""

    def __init__(self, model):
        self.model = model
        self.loss = torch.zeros(())
        self.calls = []

    def run_tii_phase(self):
        self.calls.append("tii")

    def run_tap_phase(self):
        self.calls.append("tap")


def test_routing_history_plugin_records_and_commits():
    from types import SimpleNamespace

    from avalanche_promptmoe.routing import RoutingOutput

    usage = ExpertUsage(2, 1, 4, rule="top_k", k=1)
    plugin = RoutingHistoryPlugin(usage=usage)
    out = RoutingOutput(torch.tensor([[0, 1], [1, 2]]), torch.ones(2, 2) / 2, torch.zeros(2, 4))
    strategy = _Strategy(SimpleNamespace(layers=(3, 5), last_routing={3: out, 5: out}))
    plugin.after_forward(strategy)
    assert usage.pending.sum() == 8 and usage.counts.sum() == 0
    plugin.after_training_exp(strategy)
    assert usage.counts[:, 0].tolist() == [[1, 2, 1, 0]] * 2
    clone = RoutingHistoryPlugin(usage=ExpertUsage(2, 1, 4, rule="top_k", k=1))
    clone.load_state_dict(plugin.state_dict())
    assert torch.equal(clone.usage.counts, usage.counts)


def test_gradient_scaling_plugin():
    from types import SimpleNamespace

    p = torch.nn.Parameter(torch.zeros(2, 3, 4))
    p.grad = torch.ones(2, 3, 4)
    frequent = torch.tensor([[True, False, False], [False, False, True]])
    plugin = GradientScalingPlugin(alpha=0.1, mode="grad")
    plugin.after_backward(_Strategy(SimpleNamespace(expert_grad_targets=lambda: [(p, frequent)])))
    assert torch.allclose(p.grad[frequent], torch.full((2, 4), 0.1))
    assert (p.grad[~frequent] == 1).all()
    with pytest.raises(ValueError, match="alpha"):
        GradientScalingPlugin(alpha=0.0)


def test_prototype_loss_plugin_is_inactive_until_a_task_ends():
    from types import SimpleNamespace

    keys = torch.randn(1, 4, 2, 3, requires_grad=True)
    model = SimpleNamespace(prefix_keys=lambda: keys, top_k=1, frequent_mask=lambda: torch.ones(1, 2, 4, dtype=torch.bool))
    strategy = _Strategy(model)
    plugin = PrototypeLossPlugin(weight=1.0)
    plugin.before_backward(strategy)
    assert strategy.loss.item() == 0.0
    plugin.after_training_exp(strategy)
    with torch.no_grad():
        keys += torch.randn_like(keys)
    plugin.before_backward(strategy)
    assert strategy.loss.item() > 0
    clone = PrototypeLossPlugin(weight=1.0)
    clone.load_state_dict(plugin.state_dict())
    assert torch.equal(clone.old_keys, plugin.old_keys)


def test_phase_scheduler_order_and_ablation():
    s = _Strategy(None)
    plugin = PhaseSchedulerPlugin()
    plugin.before_training_exp(s)
    plugin.after_training_exp(s)
    assert s.calls == ["tii", "tap"] and plugin.completed == [["tii", "wtp", "tap"]]
    s2 = _Strategy(None)
    ablated = PhaseSchedulerPlugin(phases=("tap", "wtp"))
    ablated.before_training_exp(s2)
    ablated.after_training_exp(s2)
    assert s2.calls == ["tap"] and ablated.phases == ("wtp", "tap")
    with pytest.raises(ValueError, match="phases"):
        PhaseSchedulerPlugin(phases=("tii", "warmup"))


def test_prototype_loss_sum_reduction_scales_by_heads_and_targets():
    g = torch.Generator().manual_seed(0)
    old, cur = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    frequent = torch.ones(3, 5, dtype=torch.bool)
    mean = prototype_loss(old, frequent, cur, 2, "mean")
    total = prototype_loss(old, frequent, cur, 2, "sum")
    torch.testing.assert_close(total, mean * 3 * 2)  # H = 3 heads, K = 2 targets, equal rows per head
    with pytest.raises(ValueError, match="reduction"):
        prototype_loss(old, frequent, cur, 2, "max")
