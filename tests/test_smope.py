"""SMoPE: model maths (DECISIONS.md §B1), invariant 9 (noise only in training, never-selected experts
excluded at inference, one forward pass at inference) and the strategy end to end (dense warm-up,
router and prototype losses, usage counting, frozen backbone, determinism, checkpoints)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from cl_utils import make_benchmark, tiny_backbone
from conftest import make_tiny_vit
from hypothesis import given
from hypothesis import strategies as st

from avalanche_promptmoe import SMoPEStrategy
from avalanche_promptmoe.methods.smope.config import SMoPEConfig
from avalanche_promptmoe.methods.smope.model import SMoPEModel

seeds = st.integers(0, 10_000)
TINY = dict(layers=(0, 1), num_experts=6, top_k=2, lr=0.03, head_lr_scale=1.0, tap_epochs=2, tap_lr=0.01,
            samples_per_class=16)
EPOCHS, TRAIN_PER_EXP = 2, 32  # make_benchmark(): 2 classes x 16 samples per experience


_VIT = make_tiny_vit(seed=0)  # copied per model: timm's weight init dominates a tiny model's cost


def _model(seed: int = 0, **kw) -> SMoPEModel:
    cfg = dict(layers=(0, 1), num_experts=6, top_k=2, generator=torch.Generator().manual_seed(seed))
    cfg.update(kw)
    return SMoPEModel(copy.deepcopy(_VIT), num_classes=5, **cfg).eval()


def _images(seed: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _mask(seed: int, shape: tuple[int, ...], p: float = 0.5) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < p


def _accuracy_matrix(s: SMoPEStrategy) -> np.ndarray:
    metric = [m for m in s.evaluator.metrics if type(m).__name__ == "TaskAveragedMetrics"][0]
    return np.array(metric.accuracy_matrix, dtype=float)


# --- config -----------------------------------------------------------------------------------


def test_config_defaults_are_the_cifar100_scripts():
    c = SMoPEConfig()
    assert c.layers == (0, 1, 2, 3, 4, 5) and c.num_experts == 25 and c.top_k == 5
    assert (c.epsilon, c.inference_epsilon, c.router_weight, c.proto_weight) == (0.4, 2.0, 1e-5, 1e-5)
    assert (c.epochs, c.optimizer, c.weight_decay, c.lr_schedule) == (20, "adamw", 0.0, "cosine")
    assert (c.lr_min, c.lr_freeze_iters) == (0.0, 0)  # the CIFAR config adds the script's per-iteration cosine
    assert c.clip_grad is None
    assert c.lr == 0.025 and math.isclose(c.lr * c.head_lr_scale, 0.005)
    assert c.phases == ("wtp", "tap") and c.contrastive_weight == 0 and c.dense_warmup_fraction == 0.5
    assert (c.tap_centroids, c.tap_optimizer, c.tap_lr, c.tap_epochs) == (1, "adamw", 1e-5, 50)
    bad_settings = (
        dict(phases=("tii", "wtp", "tap")), dict(epsilon=1.5), dict(top_k=26), dict(router_weight=-1.0),
    )
    for bad in bad_settings:
        with pytest.raises(ValueError, match=next(iter(bad))):
            SMoPEConfig(**bad)


def test_pool_shape_and_parameter_count():
    m = _model()
    H, Dh = m.vit.num_heads, m.vit.head_dim
    assert m.pool.keys.shape == (2, 6, 1, H, Dh) and m.prefix_keys().shape == (2, 6, H, Dh)
    assert m.frequent_mask().shape == (2, H, 6) and m.frequent_mask().dtype == torch.bool
    assert m.pool.num_parameters() == 2 * 6 * 2 * H * Dh  # layers x experts x (key, value) x heads x Dh
    assert (m.pool.keys >= 0).all() and (m.pool.keys <= 1).all()  # U(0, 1)


# --- the prefix the engine receives (DECISIONS.md §B1) ----------------------------------------


@given(seed=seeds, training=st.booleans(), dense=st.booleans())
def test_prefix_logit_is_the_unpenalised_proxy_score_for_every_token(seed, training, dense):
    m = _model(seed)
    L, H, E = m.frequent.shape
    m.set_usage(_mask(seed, (L, H, E)), _mask(seed + 7, (L, H, E), 0.3))
    m.train(training)
    m.dense = dense
    x = _images(seed)
    routing, scores = {}, {}
    out, logits = m.vit.forward_explicit(x, m.prefix_provider(routing, scores))
    P = E if dense and training else m.top_k
    for layer in m.layers:
        idx = routing[layer].indices
        assert idx.shape == (3, H, P)
        expected = scores[layer].gather(-1, idx) / math.sqrt(m.vit.head_dim)  # (B, H, P)
        assert logits[layer].shape == (3, H, 17, P)
        every_token = expected.unsqueeze(2).expand_as(logits[layer])
        torch.testing.assert_close(logits[layer], every_token, rtol=0, atol=1e-6)
    fused = m.vit(x, m.prefix_provider({}, {}))
    torch.testing.assert_close(fused, out, rtol=0, atol=1e-5)


def test_provider_gathers_the_selected_experts_values_per_head():
    m = _model(3)
    H, Dh = m.vit.num_heads, m.vit.head_dim
    q = torch.randn(4, H, 17, Dh, generator=torch.Generator().manual_seed(0))
    routing, scores = {}, {}
    pk, pv, bias = m.prefix_provider(routing, scores)(1, None, q)
    idx = routing[1].indices
    expected_scores = torch.einsum("bhd,ehd->bhe", q.mean(2), m.pool.keys[1, :, 0])
    torch.testing.assert_close(scores[1], expected_scores)
    assert pk.shape == (1, H, 2, Dh) and not pk.any()
    assert pv.shape == (4, H, 2, Dh) and bias.shape == (4, H, 1, 2)
    for b in range(4):
        for h in range(H):
            for k in range(2):
                assert torch.equal(pv[b, h, k], m.pool.values[1, idx[b, h, k], 0, h])
    # eval mode, no usage yet: the plain top-K of the proxy scores
    assert torch.equal(idx, torch.topk(expected_scores, 2, dim=-1).indices)


# --- invariant 9: noise only in training -------------------------------------------------------


@given(seed=seeds, epsilon=st.floats(0.01, 1.0))
def test_eval_output_does_not_depend_on_the_training_noise(seed, epsilon):
    m = _model(seed)
    m.set_usage(_mask(seed, tuple(m.frequent.shape)), torch.zeros_like(m.never_selected))
    assert m.frequent.any()
    x = _images(seed)
    m.epsilon = 0.0
    plain = m(x)
    m.epsilon = epsilon
    noisy = m(x)
    assert torch.equal(plain, noisy)


@given(seed=seeds)
def test_training_noise_moves_selection_off_the_frequent_experts(seed):
    m = _model(seed, layers=(0,))
    x = _images(seed, n=1)
    m.eval()
    m(x)
    raw_top = m.last_routing[0].indices[0]  # (H, K): the plain top-K (no usage yet)
    frequent = torch.zeros_like(m.frequent).scatter(-1, raw_top.unsqueeze(0), True)  # (1, H, E)
    m.set_usage(frequent, torch.zeros_like(frequent))
    m.train()
    m.epsilon = 0.0
    m(x)
    assert torch.equal(m.last_routing[0].indices[0], raw_top)  # ε = 0: no noise, same choice
    m.epsilon = 1.0
    m(x)
    noisy = m.last_routing[0].indices[0]
    assert not frequent[0].gather(-1, noisy).any()  # ε = 1: every frequent expert drops to the bottom
    m.eval()
    m(x)
    assert torch.equal(m.last_routing[0].indices[0], raw_top)  # and none of it at inference


@given(seed=seeds)
def test_never_selected_experts_are_excluded_at_inference_only(seed):
    m = _model(seed)
    L, H, E = m.frequent.shape
    never = _mask(seed, (L, H, E), 0.6)
    never[..., : m.top_k] = False  # at least K usable experts per (layer, head)
    m.set_usage(torch.zeros_like(never), never)
    x = _images(seed, n=6)
    m(x)
    for pos, layer in enumerate(m.layers):
        idx = m.last_routing[layer].indices  # (B, H, K)
        assert not never[pos].unsqueeze(0).expand(6, -1, -1).gather(-1, idx).any()


def test_no_inference_penalty_before_any_counts():
    m = _model(1)
    x = _images(1)
    plain = m(x)
    m.set_usage(torch.zeros_like(m.frequent), torch.ones_like(m.never_selected))  # nothing counted yet
    assert not m.never_selected.any()
    assert torch.equal(m(x), plain)


def test_dense_mode_is_a_training_mode_only():
    m = _model(2)
    x = _images(2)
    m.dense = True
    m.train()
    m(x)
    assert all(r.indices.shape[-1] == 6 for r in m.last_routing.values())
    m.eval()
    m(x)
    assert all(r.indices.shape[-1] == 2 for r in m.last_routing.values())


# --- the strategy end to end -------------------------------------------------------------------


class Recorder(SupervisedPlugin):
    """Placed after the method's plugins: sees each step's state and each task's committed usage."""

    checkpoint_stateless = True  # a test probe: nothing to carry over a resume

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict] = []
        self.tasks: list[dict] = []
        self.eval_batches = 0
        self.eval_hits = 0
        self.eval_violations = 0
        self.eval_mode: list[bool] = []

    def after_training_iteration(self, strategy, **kwargs):
        r = strategy.last_router_loss
        self.steps.append(dict(
            task=strategy.task_id, dense=strategy.model.dense, router=None if r is None else float(r),
            optimizer=id(strategy.optimizer), lr=strategy.optimizer.param_groups[0]["lr"],
            loss=float(strategy.loss.detach()),
        ))

    def after_training_exp(self, strategy, **kwargs):
        usage = strategy.routing_history.usage
        self.tasks.append(dict(
            counts=usage.counts.clone(), snapshots=len(usage.snapshots), frequent=usage.frequent(),
            model_frequent=strategy.model.frequent.clone(),
            proto_frequent=strategy.prototype_loss.old_frequent,
            train_epochs=strategy.train_epochs, never=strategy.model.never_selected.clone(),
        ))

    def after_eval_forward(self, strategy, **kwargs):
        self.eval_batches += 1
        self.eval_mode.append(strategy.model.training)
        counts = strategy.routing_history.usage.counts
        for pos, layer in enumerate(strategy.model.layers):
            idx = strategy.model.last_routing[layer].indices.cpu()  # (B, H, K)
            zero = (counts[pos] == 0).unsqueeze(0).expand(idx.shape[0], -1, -1)
            self.eval_violations += int(zero.gather(-1, idx).sum())
            self.eval_hits += idx.numel()


def _strategy(seed: int = 0, plugins=(), **kw) -> SMoPEStrategy:
    cfg = dict(TINY, train_epochs=EPOCHS)
    cfg.update(kw)
    return SMoPEStrategy(
        backbone=tiny_backbone(), num_classes=6, train_mb_size=16, device="cpu", loggers=[], progress=False,
        seed=seed, plugins=list(plugins), **cfg,
    )


def _train_all(s: SMoPEStrategy, bm, n_exp: int | None = None) -> None:
    for i, exp in enumerate(bm.train_stream):
        if n_exp is not None and i >= n_exp:
            break
        s.train(exp, eval_streams=[])
        s.eval(bm.test_stream)


@pytest.fixture(scope="module")
def run():
    """One tiny SMoPE run on 3 experiences (no task labels), with the prototype loss observed."""
    import avalanche_promptmoe.training.plugins.prototype_loss as proto_mod

    calls = {"n": 0}
    real = proto_mod.prototype_loss

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    class ProtoCalls(SupervisedPlugin):
        checkpoint_stateless = True  # a test probe

        def __init__(self) -> None:
            super().__init__()
            self.per_step: list[tuple[int, int]] = []

        def after_training_iteration(self, strategy, **kwargs):
            self.per_step.append((strategy.task_id, calls["n"]))
            calls["n"] = 0

    rec, proto = Recorder(), ProtoCalls()
    bm = make_benchmark()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(proto_mod, "prototype_loss", counting)
        s = _strategy(plugins=[rec, proto])
        backbone_before = {k: v.clone() for k, v in s.model.vit.backbone.state_dict().items()}
        _train_all(s, bm)
    return SimpleNamespace(s=s, rec=rec, proto=proto, bm=bm, backbone_before=backbone_before)


def test_trains_and_evaluates_without_task_labels(run):
    A = _accuracy_matrix(run.s)
    assert A.shape == (3, 3) and np.isfinite(A).all()
    assert np.diag(A).mean() > 0.6, A  # each task is learned (chance: 1/6 over the seen classes)
    assert all(np.isfinite(step["loss"]) for step in run.rec.steps)


def test_dense_warmup_runs_on_the_first_task_only_then_resets_the_optimizer(run):
    s, steps = run.s, run.rec.steps
    dense_epochs = int(EPOCHS * 0.5)
    sparse = [(t, "sparse") for t in range(3) for _ in range(EPOCHS)]
    assert s.epoch_modes == [(0, "dense")] * dense_epochs + sparse
    assert [t["train_epochs"] for t in run.rec.tasks] == [EPOCHS] * 3  # restored after the warm-up
    dense_steps = [x for x in steps if x["dense"]]
    sparse0 = [x for x in steps if x["task"] == 0 and not x["dense"]]
    assert dense_steps and all(x["task"] == 0 for x in dense_steps)
    steps_per_epoch = TRAIN_PER_EXP // 16
    assert len(dense_steps) == dense_epochs * steps_per_epoch and len(sparse0) == EPOCHS * steps_per_epoch
    fresh = {x["optimizer"] for x in dense_steps}.isdisjoint({x["optimizer"] for x in sparse0})
    assert fresh  # a new optimizer object (fresh AdamW state) for the sparse epochs
    assert sparse0[0]["lr"] == pytest.approx(TINY["lr"])  # and a fresh schedule for the sparse epochs


def test_router_loss_is_finite_and_skipped_when_dense(run):
    for step in run.rec.steps:
        if step["dense"]:
            assert step["router"] is None
        else:
            assert step["router"] is not None and math.isfinite(step["router"]) and step["router"] > 0


def test_prototype_loss_is_active_from_the_second_task(run):
    per_step = run.proto.per_step
    assert per_step and all(n == 0 for t, n in per_step if t == 0)
    assert all(n == len(TINY["layers"]) for t, n in per_step if t > 0)
    assert any(t > 0 for t, _ in per_step)


def test_usage_counts_the_post_task_pass_and_drives_the_frequent_set(run):
    K, tasks = TINY["top_k"], run.rec.tasks
    for t, info in enumerate(tasks):
        # exactly K hits per training sample, per (layer, head), from the eval-mode pass only
        assert (info["counts"].sum(-1) == K * TRAIN_PER_EXP * (t + 1)).all()
        assert info["snapshots"] == t + 1
        # the model, TAP and the prototype snapshot see this task's counts already
        assert torch.equal(info["model_frequent"].cpu(), info["frequent"])
        assert torch.equal(info["proto_frequent"], info["frequent"])
        assert torch.equal(info["never"].cpu(), info["counts"] == 0)
        if t:
            assert (info["frequent"] >= tasks[t - 1]["frequent"]).all()  # sticky


def test_one_backbone_pass_per_minibatch_at_inference(run):
    s, bm = run.s, run.bm
    calls = []
    handle = s.model.vit.backbone.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    batches_before = run.rec.eval_batches
    try:
        s.eval(bm.test_stream)
    finally:
        handle.remove()
    batches = run.rec.eval_batches - batches_before
    assert batches == sum(math.ceil(len(e.dataset) / s.eval_mb_size) for e in bm.test_stream)
    assert len(calls) == batches
    assert not any(run.rec.eval_mode)


def test_backbone_is_bit_identical_after_training(run):
    after = run.s.model.vit.backbone.state_dict()
    assert after.keys() == run.backbone_before.keys()
    assert all(torch.equal(after[k], v) for k, v in run.backbone_before.items())
    trainable = {n for n, p in run.s.model.named_parameters() if p.requires_grad}
    assert trainable == {"pool.keys", "pool.values", "head.weight", "head.bias"}


def test_same_seed_gives_the_same_accuracy_matrix(run):
    again = _strategy()
    _train_all(again, run.bm)
    np.testing.assert_array_equal(_accuracy_matrix(again), _accuracy_matrix(run.s))
    assert torch.equal(again.model.pool.keys, run.s.model.pool.keys)
    assert torch.equal(again.routing_history.usage.counts, run.s.routing_history.usage.counts)


def test_checkpoint_round_trip_gives_identical_outputs(run, tmp_path):
    path = run.s.save_checkpoint(tmp_path / "smope.ckpt")
    fresh = _strategy()
    assert fresh.resume_from(path) == 3
    x = _images(0, n=4)
    run.s.model.eval()
    fresh.model.eval()
    with torch.no_grad():
        assert torch.equal(fresh.model(x), run.s.model(x))
    assert torch.equal(fresh.routing_history.usage.counts, run.s.routing_history.usage.counts)
    assert torch.equal(fresh.prototype_loss.old_keys, run.s.prototype_loss.old_keys)


def test_trains_and_evaluates_with_task_labels():
    bm = make_benchmark(task_labels=True)
    s = _strategy(use_task_labels=True)
    _train_all(s, bm)
    A = _accuracy_matrix(s)
    assert A.shape == (3, 3) and np.isfinite(A).all() and np.diag(A).mean() > 0.6, A


def test_expert_never_selected_in_training_is_never_selected_at_inference():
    rec = Recorder()
    bm = make_benchmark(n_exp=2)
    s = _strategy(plugins=[rec], num_experts=16, top_k=1, train_epochs=1, tap_epochs=1)
    _train_all(s, bm)
    counts = s.routing_history.usage.counts
    assert (counts == 0).any(), "the check needs experts that were never selected"
    assert rec.eval_hits > 0 and rec.eval_violations == 0


def test_model_imports_without_avalanche_or_mlflow():
    code = (
        "import sys; sys.modules['avalanche'] = None; sys.modules['mlflow'] = None\n"
        "from avalanche_promptmoe.methods.smope.model import SMoPEModel\n"
        "assert not any(m.startswith(('avalanche.', 'mlflow.')) for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_official_recipe_end_to_end():
    """recipe="official" (issue #17) on the tiny benchmark, 2 experiences of 32 images, batch 12:
    the training loader and the count pass drop the last partial batch (2 batches = 24 images
    counted, K per image, layer and head), the count pass and the TAP statistics read the training
    transform in fp32, the main cosine's first iteration runs at the group lr (the lag) and the TAP's
    at ``tap_first_lr``. The default recipe counts all 32 eval-transform images."""
    lrs: list[tuple[int, float]] = []
    groups: list[str] = []

    class LrProbe(SupervisedPlugin):
        checkpoint_stateless = True  # a test probe

        def before_training_iteration(self, strategy, **kwargs):
            lrs.append((strategy.task_id, strategy.optimizer.param_groups[0]["lr"]))

    def strategy(recipe: str, **kw) -> SMoPEStrategy:
        cfg = dict(TINY, train_epochs=1, recipe=recipe, lr_schedule="cosine_iter", lr_min=1e-4, lr_freeze_iters=1,
                   tap_lr_schedule="cosine_iter", tap_lr_min=1e-6, tap_lr=1e-3, **kw)
        s = SMoPEStrategy(backbone=tiny_backbone(), num_classes=6, train_mb_size=12, device="cpu", loggers=[],
                          progress=False, seed=0, plugins=[LrProbe()], **cfg)
        source = s.statistics_source

        def spy():
            ds, autocast = source()
            groups.append((ds._flat_data._transform_groups.current_group, autocast))
            return ds, autocast

        s.statistics_source = spy
        return s

    bm = make_benchmark(n_exp=2)
    s = strategy("official", tap_first_lr=5e-3)
    tap_lrs: list[float] = []
    import avalanche_promptmoe.training.phases as phases

    real_fit = phases._fit
    with pytest.MonkeyPatch.context() as mp:
        def fit(*a, **k):
            tap_lrs.append(k.get("first_lr"))
            return real_fit(*a, **k)

        mp.setattr(phases, "_fit", fit)
        s.train(bm.train_stream[0], eval_streams=[])
        counts0 = s.expert_usage()
        s.train(bm.train_stream[1], eval_streams=[])
    K = s.cfg.top_k
    assert (counts0.sum(-1) == 24 * K).all()  # 2 full batches of 12, the last 8 dropped
    assert (s.expert_usage().sum(-1) == 48 * K).all()
    task1 = [lr for t, lr in lrs if t == 1]
    assert len(task1) == 2  # one sparse epoch of 2 batches (drop_last; 3 without)
    assert task1[0] == pytest.approx(s.cfg.lr) and task1[1] == pytest.approx(1e-4)  # lag, then the frozen step
    assert tap_lrs == [5e-3] and groups == [("train", False), ("train", False)]

    groups.clear()
    d = strategy("ours")
    d.train(bm.train_stream[0], eval_streams=[])
    assert (d.expert_usage().sum(-1) == 32 * K).all()  # all 32 eval-transform images
    assert groups == [("eval", True)]
