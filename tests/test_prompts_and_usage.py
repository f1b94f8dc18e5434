"""Prompt pools, usage counting and the import boundary of the torch-only layers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from avalanche_promptmoe.prompts import PromptPool, prefix_lengths
from avalanche_promptmoe.routing import (
    ExpertUsage,
    TaskGatedRouter,
    count_selections,
    prompt_attention_scores,
)


def test_length_conventions():
    assert prefix_lengths(15, "kv_each") == (15, 15)
    assert prefix_lengths(50, "split") == (25, 25)
    with pytest.raises(ValueError, match="^length:"):
        prefix_lengths(5, "split")
    pool = PromptPool([0, 1], num_experts=25, length=2, num_heads=3, head_dim=4, convention="split")
    assert pool.keys.shape == (2, 25, 1, 3, 4)


@pytest.mark.parametrize(("init", "lo", "hi"), [("uniform_pm1", -1, 1), ("uniform01", 0, 1)])
def test_pool_init_ranges_and_generator(init, lo, hi):
    mk = lambda: PromptPool([0], 5, 3, 2, 4, init=init, generator=torch.Generator().manual_seed(1))  # noqa: E731
    a, b = mk(), mk()
    assert torch.equal(a.keys, b.keys) and not torch.equal(a.keys, a.values)
    assert a.keys.min() >= lo and a.keys.max() <= hi


def test_combine_is_the_weighted_sum_of_experts():
    pool = PromptPool([2], 4, 3, 2, 5)
    w = torch.tensor([[0.25, 0.0, 0.75, 0.0]])
    keys, values = pool.combine(2, w)
    expected = (0.25 * pool.keys[0, 0] + 0.75 * pool.keys[0, 2]).permute(1, 0, 2)  # (H, L, Dh)
    torch.testing.assert_close(keys[0], expected)
    assert values.shape == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="^layer: 0 is not in"):
        pool.combine(0, w)


def test_count_selections_per_head():
    idx = torch.tensor([[[0, 1], [2, 1]], [[0, 3], [2, 0]]])  # (B=2, H=2, K=2)
    counts = count_selections(idx, 4)
    assert counts.tolist() == [[2, 1, 0, 1], [1, 1, 2, 0]]


def test_usage_pending_commit_and_snapshots():
    usage = ExpertUsage(2, 1, 5, rule="top_k", k=2)
    usage.record(0, torch.tensor([[0, 1], [1, 4]]))
    assert usage.counts.sum() == 0 and usage.pending.sum() == 4
    assert not usage.frequent().any(), "pending selections do not change the frequent set"
    usage.commit()
    assert usage.counts[0, 0].tolist() == [1, 2, 0, 0, 1]
    assert usage.frequent()[0, 0].tolist() == [True, True, False, False, False]
    assert len(usage.snapshots) == 1
    clone = ExpertUsage(2, 1, 5, rule="top_k", k=2)
    clone.load_state_dict(usage.state_dict())
    assert torch.equal(clone.counts, usage.counts) and torch.equal(clone.frequent(), usage.frequent())
    with pytest.raises(ValueError, match="^state:"):
        ExpertUsage(3, 1, 5).load_state_dict(usage.state_dict())


def test_above_mean_rule_is_sticky():
    usage = ExpertUsage(1, 1, 4, rule="above_mean")
    usage.pending[0, 0] = torch.tensor([6, 2, 0, 0])
    usage.commit()
    assert usage.frequent()[0, 0].tolist() == [True, False, False, False]  # mean of non-zero = 4
    usage.pending[0, 0] = torch.tensor([0, 0, 20, 0])
    usage.commit()  # counts 6, 2, 20 → mean 9.33: expert 0 stays frequent (sticky)
    assert usage.frequent()[0, 0].tolist() == [True, False, True, False]


def test_task_router_scores_and_per_sample_tasks():
    torch.manual_seed(0)
    router = TaskGatedRouter(8, 5)
    router.add_task()
    router.add_task()
    assert not router.weights[0].requires_grad and router.weights[1].requires_grad
    x = torch.randn(3, 7, 8)
    expected = x.mean(1) @ router.weights[1] / 8**0.5
    torch.testing.assert_close(router(x, 1), expected)
    mixed = router(x, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(mixed[1], expected[1])
    torch.testing.assert_close(mixed[0], (x.mean(1) @ router.weights[0] / 8**0.5)[0])
    with pytest.raises(ValueError, match="^task_ids:"):
        router(x, 2)


def test_prompt_attention_scores_equal_token_mean_of_logits():
    q = torch.randn(2, 3, 7, 4)
    keys = torch.randn(5, 3, 4)
    per_token = torch.einsum("bhnd,ehd->bhne", q, keys)
    torch.testing.assert_close(prompt_attention_scores(q, keys), per_token.mean(2))


def test_torch_only_layers_import_without_avalanche_and_mlflow():
    code = (
        "import sys; sys.modules['avalanche'] = None; sys.modules['mlflow'] = None\n"
        "import avalanche_promptmoe, avalanche_promptmoe.engine, avalanche_promptmoe.prompts\n"
        "import avalanche_promptmoe.routing, avalanche_promptmoe.methods.hash.model\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
