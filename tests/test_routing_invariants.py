"""Hypothesis property tests for DESIGN.md §3 invariants 1–4, 7 and 8 (5 and 6: test_engine.py)."""

from __future__ import annotations

import torch
from conftest import make_tiny_vit
from hypothesis import assume, given
from hypothesis import strategies as st

from avalanche_promptmoe.methods.hash.model import HashPromptModel
from avalanche_promptmoe.routing import (
    ExpertUsage,
    adaptive_noise,
    dense_weights,
    history_penalty,
    scale_frequent_grads,
    top_k_route,
)

seeds = st.integers(0, 10_000)


def _scores(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _model(seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    cfg = dict(layers=(0, 1), num_experts=6, length=3, top_k=2, generator=g)
    cfg.update(kw)
    m = HashPromptModel(make_tiny_vit(seed=seed), num_classes=5, **cfg)
    m.add_task()
    return m.eval()


# --- invariant 1 ----------------------------------------------------------------------------


@given(batch=st.integers(1, 8), experts=st.integers(1, 12), data=st.data(), seed=seeds)
def test_top_k_picks_k_distinct_experts_with_normalised_weights(batch, experts, data, seed):
    k = data.draw(st.integers(1, experts))
    out = top_k_route(_scores(seed, batch, experts) * 3, k)
    assert out.indices.shape == (batch, k) and out.weights.shape == (batch, k)
    assert ((out.indices >= 0) & (out.indices < experts)).all()
    assert all(len(set(row.tolist())) == k for row in out.indices)
    assert (out.weights >= 0).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(batch))
    dense = dense_weights(out, experts)
    assert ((dense > 0).sum(-1) <= k).all()
    torch.testing.assert_close(dense.sum(-1), torch.ones(batch))


@given(experts=st.integers(1, 8), seed=seeds)
def test_top_k_rejects_bad_k(experts, seed):
    scores = _scores(seed, 2, experts)
    for bad in (0, -1, experts + 1):
        try:
            top_k_route(scores, bad)
        except ValueError as err:
            assert str(err).startswith("top_k:")
        else:
            raise AssertionError(f"k={bad} accepted with {experts} experts")


# --- invariant 2 ----------------------------------------------------------------------------


@given(batch=st.integers(2, 5), seed=seeds)
def test_eval_is_deterministic_and_batch_independent(batch, seed):
    model = _model(seed % 7)
    x = _scores(seed, batch, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        routing_full = {k: v.indices.clone() for k, v in model.last_routing.items()}
        scores_full = {k: v.scores.clone() for k, v in model.last_routing.items()}
        again = model(x)
        torch.testing.assert_close(again, full, atol=0, rtol=0)
        single = model(x[:1])
        sub = model(x[: batch - 1])
    torch.testing.assert_close(single[0], full[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(sub, full[: batch - 1], atol=1e-5, rtol=0)
    # routing equal where the K-th and (K+1)-th scores are separated
    with torch.no_grad():
        model(x[:1])
    for layer, idx in routing_full.items():
        top = scores_full[layer][0].sort(descending=True).values
        if top[1] - top[2] > 1e-4:
            assert set(model.last_routing[layer].indices[0].tolist()) == set(idx[0].tolist())


# --- invariant 3 ----------------------------------------------------------------------------


@given(batch=st.integers(1, 16), experts=st.integers(2, 10), data=st.data(), seed=seeds)
def test_zero_delta_is_identity_and_penalty_touches_only_frequent(batch, experts, data, seed):
    k = data.draw(st.integers(1, experts - 1))
    frequent = torch.tensor(data.draw(st.lists(st.booleans(), min_size=experts, max_size=experts)))
    scores = _scores(seed, batch, experts)
    plain = top_k_route(scores, k)
    zero = top_k_route(history_penalty(scores, frequent, 0.0), k)
    assert torch.equal(plain.indices, zero.indices) and torch.equal(plain.weights, zero.weights)
    delta = data.draw(st.floats(0.01, 3.0))
    penalised = history_penalty(scores, frequent, delta)
    torch.testing.assert_close(penalised[:, ~frequent], scores[:, ~frequent], atol=0, rtol=0)
    torch.testing.assert_close(penalised[:, frequent], scores[:, frequent] - delta)


@given(batch=st.integers(4, 32), experts=st.integers(3, 10), data=st.data(), seed=seeds)
def test_raising_delta_never_raises_selection_of_penalised_experts(batch, experts, data, seed):
    k = data.draw(st.integers(1, experts - 1))
    frequent = torch.zeros(experts, dtype=torch.bool)
    frequent[data.draw(st.lists(st.integers(0, experts - 1), min_size=1, max_size=experts - 1, unique=True))] = True
    scores = _scores(seed, batch, experts)
    deltas = sorted(data.draw(st.lists(st.floats(0.0, 5.0), min_size=2, max_size=4)))
    picks = []
    for delta in deltas:
        idx = top_k_route(history_penalty(scores, frequent, delta), k).indices
        picks.append(int(frequent[idx].sum()))
    assert all(a >= b for a, b in zip(picks, picks[1:])), (deltas, picks)


@given(experts=st.integers(2, 8), data=st.data())
def test_usage_frequent_set(experts, data):
    k = data.draw(st.integers(1, experts))
    counts = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=experts, max_size=experts)))
    usage = ExpertUsage(1, 1, experts, rule="top_k", k=k)
    usage.counts[0, 0] = counts
    freq = usage.frequent()[0, 0]
    assert not freq[counts == 0].any(), "an expert never used is never frequent"
    assert int(freq.sum()) == min(k, int((counts > 0).sum()))
    if freq.any() and (~freq & (counts > 0)).any():
        assert counts[freq].min() >= counts[~freq & (counts > 0)].max()
    # ties break towards the lower index
    for i in range(experts):
        for j in range(i + 1, experts):
            if counts[i] == counts[j] and counts[i] > 0 and freq[j]:
                assert freq[i]


# --- invariant 4 ----------------------------------------------------------------------------


@given(layers=st.integers(1, 3), experts=st.integers(1, 8), alpha=st.floats(0.01, 1.0), seed=seeds, data=st.data())
def test_gradient_scaling(layers, experts, alpha, seed, data):
    grad = _scores(seed, layers, experts, 2, 3, 4)
    flags = data.draw(st.lists(st.booleans(), min_size=layers * experts, max_size=layers * experts))
    frequent = torch.tensor(flags).view(layers, experts)
    scaled = scale_frequent_grads(grad, frequent, alpha)
    torch.testing.assert_close(scaled[frequent], alpha * grad[frequent])
    torch.testing.assert_close(scaled[~frequent], grad[~frequent], atol=0, rtol=0)
    assert torch.equal(scale_frequent_grads(grad, frequent, 1.0), grad)


# --- invariant 7 ----------------------------------------------------------------------------


@given(seed=seeds, data=st.data())
def test_permuting_experts_permutes_choices_and_keeps_output(seed, data):
    model = _model(seed % 5)
    E = model.num_experts
    perm = torch.tensor(data.draw(st.permutations(range(E))))
    model.frequent[:, :2] = True
    x = _scores(seed, 3, 3, 32, 32)
    with torch.no_grad():
        # draw distinct scores: skip near-ties at the K boundary
        out = model(x)
        for routing in model.last_routing.values():
            top = routing.scores.sort(-1, descending=True).values
            assume(bool(((top[:, 1] - top[:, 2]).abs() > 1e-4).all()))
        before = {k: v.indices.clone() for k, v in model.last_routing.items()}
        # new expert j is old expert perm[j]
        model.pool.keys.copy_(model.pool.keys[:, perm])
        model.pool.values.copy_(model.pool.values[:, perm])
        for router in model.routers:
            router.weights[0].copy_(router.weights[0][:, perm])
        model.frequent.copy_(model.frequent[:, perm])
        permuted = model(x)
    torch.testing.assert_close(permuted, out, atol=1e-5, rtol=0)
    for layer, idx in before.items():
        mapped = perm[model.last_routing[layer].indices]
        assert torch.equal(mapped.sort(-1).values, idx.sort(-1).values)


# --- invariant 8 ----------------------------------------------------------------------------


def test_frozen_means_frozen():
    model = _model(1)
    backbone_before = {k: v.clone() for k, v in model.vit.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.vit.backbone.state_dict()
    assert all(torch.equal(backbone_before[k], after[k]) for k in backbone_before)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"pool.keys", "pool.values", "head.weight", "head.bias"} | {
        f"routers.{i}.weights.0" for i in range(len(model.layers))
    }
    tii = {n for n, _ in model.tii.named_parameters(prefix="tii")}  # trained in its own phase
    assert trainable == expected | tii, trainable ^ (expected | tii)
    assert with_grad == expected, with_grad ^ expected
    assert not model.vit.backbone.training


def test_noise_is_train_only_and_deterministic():
    scores = _scores(0, 4, 6)
    frequent = torch.tensor([True, False, False, True, False, False])
    a = adaptive_noise(scores, frequent, 0.4)
    assert torch.equal(a, adaptive_noise(scores, frequent, 0.4))
    spread = scores.amax(-1, keepdim=True) - scores.amin(-1, keepdim=True)
    torch.testing.assert_close(a[:, frequent], (scores - 0.4 * spread)[:, frequent])
    assert torch.equal(a[:, ~frequent], scores[:, ~frequent])
