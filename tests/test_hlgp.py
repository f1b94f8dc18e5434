"""HLGP (layer-grouped hierarchical prompts): generator, copy-forward, Soft Task Matching, strategy."""

from __future__ import annotations

import pytest
import torch
from cl_utils import make_benchmark, tiny_backbone

from avalanche_promptmoe.methods.hlgp.config import HLGPConfig
from avalanche_promptmoe.methods.hlgp.model import task_match_weights
from avalanche_promptmoe.prompts.layer_grouped import LayerGroupedPromptGenerator

TINY = dict(
    num_classes=6, train_mb_size=16, eval_mb_size=16, train_epochs=2, device="cpu", loggers=[], progress=False,
    layers=(0, 1, 2), groups=((0, 1), (2,)), length=2, rank=4, tap_epochs=2, samples_per_class=16, tap_centroids=2,
)


def _gen(**kw) -> LayerGroupedPromptGenerator:
    args = dict(rank=2, generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return LayerGroupedPromptGenerator((0, 1, 2, 3), ((0, 1), (2, 3)), 3, 2, 4, **args)


def _randomise_(gen: LayerGroupedPromptGenerator, task: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.tasks[task].parameters():
            p.copy_(torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------------------------- generator
@pytest.mark.parametrize("share", [True, False])
def test_generator_shapes_and_counts(share: bool) -> None:
    gen = _gen(share_kv_adapter=share)
    with pytest.raises(RuntimeError, match="add_task"):
        gen.task_prompts()
    assert gen.add_task() == 0 and gen.add_task() == 1
    keys, values = gen.task_prompts()
    assert keys.shape == values.shape == (2, 4, 3, 2, 4)  # (T, Y, L, H, Dh)
    assert gen.group_prompts().shape == (2, 2, 2, 3, 8)  # (T, S, G, L, E)
    for task, batch in ((1, 1), (torch.tensor([0, 1, 1]), 3), (torch.rand(5, 2).softmax(-1), 5)):
        prefix = gen.prefix(task)
        assert sorted(prefix) == [0, 1, 2, 3]
        assert all(k.shape == v.shape == (batch, 2, 3, 4) for k, v in prefix.values())  # (B, H, L, Dh)
    with pytest.raises(ValueError, match="weights"):
        gen.prefix(torch.rand(5, 3))
    with pytest.raises(ValueError, match="ids"):
        gen.prefix(torch.tensor([0, 2]))
    per_task = sum(p.numel() for p in gen.task_parameters(1))
    assert gen.num_parameters_per_task() == per_task
    assert sum(p.numel() for p in gen.parameters()) == 2 * per_task


def test_groups_must_partition_layers() -> None:
    with pytest.raises(ValueError, match="partition"):
        LayerGroupedPromptGenerator((0, 1, 2), ((0, 1),), 2, 2, 4)
    with pytest.raises(ValueError, match="more than one group"):
        LayerGroupedPromptGenerator((0, 1), ((0, 1), (1,)), 2, 2, 4)
    with pytest.raises(ValueError, match="pie"):
        LayerGroupedPromptGenerator((0, 1), ((0, 1),), 2, 2, 4, pie="per_layer")


def test_layers_in_a_group_share_a_prompt_until_pie_moves() -> None:
    gen = _gen()
    gen.add_task()
    keys, values = gen.task_prompts()
    root = gen.tasks[0].root.unflatten(-1, (2, 4))  # (S, L, H, Dh)
    # at initialisation (zero up-projection, zero PIE) every layer's prompt is the root itself
    assert torch.equal(keys[0, 0], root[0]) and torch.equal(values[0, 3], root[1])
    _randomise_(gen, 0)
    with torch.no_grad():
        gen.tasks[0].pie.zero_()
    keys, values = gen.task_prompts()
    assert torch.equal(keys[0, 0], keys[0, 1]) and torch.equal(values[0, 2], values[0, 3])  # same group
    assert not torch.allclose(keys[0, 1], keys[0, 2])  # different groups
    with torch.no_grad():
        gen.tasks[0].pie[:, 1] += 0.5  # layer 1's position embedding, keys and values
    keys2, values2 = gen.task_prompts()
    assert not torch.allclose(keys2[0, 0], keys2[0, 1]) and not torch.allclose(values2[0, 0], values2[0, 1])
    assert torch.equal(keys2[0, 0], keys[0, 0]) and torch.equal(keys2[0, 2:], keys[0, 2:])  # only layer 1 moved


def test_mixing_is_a_weighted_sum_of_task_prompts() -> None:
    gen = _gen()
    for t in range(3):
        gen.add_task()
        _randomise_(gen, t, seed=t)
    keys, values = gen.task_prompts()  # (T, Y, L, H, Dh)
    w = torch.rand(4, 3).softmax(-1)
    mk, mv = gen.mixed_prompts(w)
    ref_k = sum(w[:, t, None, None, None, None] * keys[t] for t in range(3))
    ref_v = sum(w[:, t, None, None, None, None] * values[t] for t in range(3))
    torch.testing.assert_close(mk, ref_k, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mv, ref_v, rtol=1e-5, atol=1e-6)
    ids = torch.tensor([2, 0, 1, 2])
    assert torch.equal(gen.mixed_prompts(ids)[0], keys[ids])
    # one task alone (the training path) equals its slice of the all-task computation up to rounding
    torch.testing.assert_close(gen.mixed_prompts(1)[1], values[1:2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pie", ["per_task", "shared"])
def test_new_task_is_an_exact_copy_and_the_old_one_freezes(pie: str) -> None:
    gen = _gen(pie=pie)
    gen.add_task()
    _randomise_(gen, 0)
    before = {k: v.clone() for k, v in gen.tasks[0].state_dict().items()}
    gen.add_task()
    for (name, p0), (_, p1) in zip(gen.tasks[0].named_parameters(), gen.tasks[1].named_parameters(), strict=True):
        assert torch.equal(p0, p1), name
        assert p0.data_ptr() != p1.data_ptr(), name  # a copy, not shared storage
        assert not p0.requires_grad and p1.requires_grad
    if pie == "shared":
        assert gen.pie is not None and not gen.pie.requires_grad and gen.tasks[1].pie is None
    torch.testing.assert_close(gen.task_prompts([0]), gen.task_prompts([1]), rtol=0, atol=0)
    with torch.no_grad():
        for p in gen.tasks[1].parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in gen.tasks[0].state_dict().items())
    assert [p.requires_grad for p in gen.parameters()].count(True) == len(gen.task_parameters(1))


def test_vit_b16_parameter_count() -> None:
    """The figure docs/methods.md reports: ViT-B/16 (E = 768, 12 heads), defaults, 10 tasks."""
    cfg = HLGPConfig()
    gen = LayerGroupedPromptGenerator(cfg.layers, cfg.groups, cfg.length, 12, 64, rank=cfg.rank)
    for _ in range(10):
        gen.add_task()
    per_task = 2 * 10 * 768 + 3 * (2 * 768 * 32 + 32 + 768) + 2 * 6 * 10 * 768
    assert gen.num_parameters_per_task() == per_task == 257_376
    assert sum(p.numel() for p in gen.parameters()) == 2_573_760
    assert sum(p.numel() for p in gen.parameters() if p.requires_grad) == per_task


# ---------------------------------------------------------------------------------- task matching
def test_task_match_weights() -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    class_task = torch.tensor([0, 1, 1, -1])  # class 3 unseen
    feats = torch.tensor([[2.0, 0.1], [-1.0, 0.2], [0.1, 3.0]])
    w = task_match_weights(feats, means, class_task, 3, tau=0.1)  # task 2 has no class yet
    assert w.shape == (3, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert w[:, 2].max() < 1e-30 and w.argmax(-1).tolist() == [0, 1, 1]
    assert task_match_weights(feats, means, class_task, 3, tau=10.0)[:, :2].min() > 0.4  # high τ: flat
    hard = task_match_weights(feats, means, class_task, 3, tau=0.1, matching="hard")
    assert torch.equal(hard, torch.eye(3)[[0, 1, 1]])
    with pytest.raises(ValueError, match="matching"):
        task_match_weights(feats, means, class_task, 3, tau=0.1, matching="top2")


def test_config_validation() -> None:
    cfg = HLGPConfig(layers=[0, 1], groups=[[0], [1]])
    assert cfg.layers == (0, 1) and cfg.groups == ((0,), (1,))
    with pytest.raises(ValueError, match="partition"):
        HLGPConfig(layers=(0, 1, 2), groups=((0, 1),))
    with pytest.raises(ValueError, match="TII"):
        HLGPConfig(phases=("tii", "wtp", "tap"))
    for bad in (dict(matching="top1"), dict(match_tau=0.0), dict(pie="layer"), dict(rank=0)):
        with pytest.raises(ValueError):
            HLGPConfig(**bad)


# ---------------------------------------------------------------------------------- strategy
def _strategy(**kw):
    from avalanche_promptmoe import LayerGroupedPromptStrategy

    args = dict(TINY)
    args.update(kw)
    return LayerGroupedPromptStrategy(backbone=tiny_backbone(), **args)


def _test_batches(bm):
    loader = torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([e.dataset.eval() for e in bm.test_stream]),
                                         batch_size=16)
    return [(b[0], b[1]) for b in loader]


def _task_states(s) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in t.state_dict().items()} for t in s.model.prompts.tasks]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three tiny experiences without task labels; checkpoints after experiences 1 and 2."""
    bm = make_benchmark()
    s = _strategy()
    created: list[list[dict]] = []  # every task's state right after prepare_task
    original = s.prepare_task

    def prepare(task_id: int) -> None:
        original(task_id)
        created.append(_task_states(s))

    s.prepare_task = prepare
    after: list[list[dict]] = []
    root = tmp_path_factory.mktemp("hlgp")
    for i, exp in enumerate(bm.train_stream):
        s.train(exp, eval_streams=[])
        after.append(_task_states(s))
        if i == 1:
            s.save_checkpoint(root / "mid.ckpt")
    s.save_checkpoint(root / "end.ckpt")
    result = s.eval(bm.test_stream)
    s.model.eval()
    batches = _test_batches(bm)
    with torch.no_grad():
        logits = [s.predict_logits(x, None) for x, _ in batches]
    return dict(bm=bm, s=s, created=created, after=after, root=root, result=result, batches=batches, logits=logits)


def test_end_to_end_without_task_labels(trained) -> None:
    s, result = trained["s"], trained["result"]
    assert s.model.num_tasks == 3 and s.trained_experiences == 3
    acc = result["Top1_Acc_Stream/eval_phase/test_stream"]
    assert 0.0 <= acc <= 1.0
    assert [c["phases"] for c in [s.phase_scheduler.state_dict()]] == [["wtp", "tap"]]
    assert s.phase_scheduler.completed == [["wtp", "tap"]] * 3
    assert sorted(s.tap_stats.classes) == list(range(6))
    assert s.model.class_task.tolist() == [0, 0, 1, 1, 2, 2]


def test_copy_forward_and_frozen_history_in_training(trained) -> None:
    created, after = trained["created"], trained["after"]
    for t in range(1, 3):
        new = created[t][t]
        for k, v in after[t - 1][t - 1].items():  # task t starts as task t-1 ended
            assert torch.equal(new[k], v), (t, k)
        for old in range(t):  # training task t leaves every earlier task bit-identical
            for k, v in after[t - 1][old].items():
                assert torch.equal(after[t][old][k], v), (t, old, k)
        assert not torch.equal(after[t][t]["root"], new["root"])  # task t itself did train
    s = trained["s"]
    trainable = {n for n, p in s.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} | {f"prompts.tasks.2.{n}" for n, _ in
                                                         s.model.prompts.tasks[2].named_parameters()}


def test_backbone_unchanged_by_training(trained) -> None:
    from avalanche_promptmoe.training.checkpointing.strategy_checkpoint import weights_fingerprint

    s = trained["s"]
    assert weights_fingerprint(s.model.vit.backbone) == s.backbone_fingerprint
    fresh = tiny_backbone().state_dict()
    trained_sd = {k.replace(".attn.attn.", ".attn."): v for k, v in s.model.vit.backbone.state_dict().items()}
    assert trained_sd.keys() == fresh.keys()
    assert all(torch.equal(trained_sd[k], v) for k, v in fresh.items())
    assert not any(p.requires_grad for p in s.model.vit.parameters())


def test_soft_task_matching_finds_the_task(trained) -> None:
    s = trained["s"]
    correct = total = 0
    with torch.no_grad():
        for x, y in trained["batches"]:
            w = s.model.task_weights(x)
            assert w.shape == (len(y), 3) and (w >= 0).all()
            torch.testing.assert_close(w.sum(-1), torch.ones(len(y)))
            correct += int((w.argmax(-1) == y // 2).sum())
            total += len(y)
    assert correct / total > 0.6  # chance: 1/3


def test_hard_vs_soft_matching(trained) -> None:
    m = trained["s"].model
    x = torch.cat([b[0] for b in trained["batches"]])
    try:
        with torch.no_grad():
            soft = m(x)
            w_soft = m.last_task_weights
            m.matching = "hard"
            hard = m(x)
            w_hard = m.last_task_weights
            ids = w_soft.argmax(-1)
            assert torch.equal(w_hard, torch.eye(3)[ids])
            assert torch.equal(hard, m(x, ids))  # hard matching = the argmax task's own prompt
            assert not torch.allclose(soft, hard, atol=1e-4)  # soft fuses: a different output
            m.matching, m.tau = "soft", 1e-7  # τ → 0: soft matching becomes hard
            torch.testing.assert_close(m(x), hard, rtol=0, atol=1e-6)
    finally:
        m.matching, m.tau = "soft", 0.1


def test_query_pass_is_one_extra_backbone_forward(trained) -> None:
    s, bm = trained["s"], trained["bm"]
    counts = {"backbone": 0, "head": 0}
    h1 = s.model.vit.backbone.patch_embed.register_forward_hook(lambda *_: counts.__setitem__("backbone", counts["backbone"] + 1))
    h2 = s.model.head.register_forward_hook(lambda *_: counts.__setitem__("head", counts["head"] + 1))
    try:
        s.eval(bm.test_stream)
    finally:
        h1.remove()
        h2.remove()
    assert counts["head"] == 3  # one eval minibatch of 16 per experience
    assert counts["backbone"] == 2 * counts["head"]


def test_resume_reproduces_eval_outputs_bit_for_bit(trained) -> None:
    s2 = _strategy()
    assert s2.resume_from(trained["root"] / "end.ckpt") == 3
    assert s2.model.num_tasks == 3 and s2.model.prompts.tasks[1].root.requires_grad is False
    s2.model.eval()
    with torch.no_grad():
        for (x, _), ref in zip(trained["batches"], trained["logits"], strict=True):
            assert torch.equal(s2.predict_logits(x, None), ref)
    assert s2.eval(trained["bm"].test_stream)["Top1_Acc_Stream/eval_phase/test_stream"] == \
        trained["result"]["Top1_Acc_Stream/eval_phase/test_stream"]


def test_resume_mid_run_matches_the_uninterrupted_run(trained) -> None:
    s2 = _strategy()
    assert s2.resume_from(trained["root"] / "mid.ckpt") == 2
    s2.train(trained["bm"].train_stream[2], eval_streams=[])
    s2.model.eval()
    with torch.no_grad():
        for (x, _), ref in zip(trained["batches"], trained["logits"], strict=True):
            assert torch.equal(s2.predict_logits(x, None), ref)


def test_end_to_end_with_task_labels() -> None:
    bm = make_benchmark(task_labels=True)
    s = _strategy(use_task_labels=True, train_epochs=1)
    for exp in bm.train_stream:
        s.train(exp, eval_streams=[])
    calls = []
    hook = s.model.vit.backbone.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = s.eval(bm.test_stream)
    finally:
        hook.remove()
    assert len(calls) == 3  # oracle task id: no query pass
    assert any(k.startswith("Top1_Acc_Stream") for k in result)
    x = next(iter(torch.utils.data.DataLoader(bm.test_stream[1].dataset.eval(), batch_size=16)))[0]
    s.model.eval()
    with torch.no_grad():
        oracle = s.predict_logits(x, torch.ones(len(x), dtype=torch.long))
        torch.testing.assert_close(oracle, s.model(x, 1), rtol=1e-5, atol=1e-5)  # task 1's own prompt


def test_model_imports_without_avalanche_and_mlflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['avalanche'] = None; sys.modules['mlflow'] = None\n"
        "import avalanche_promptmoe.prompts.layer_grouped, avalanche_promptmoe.methods.hlgp.model\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
