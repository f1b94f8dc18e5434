"""L2P, DualPrompt and CODA-Prompt as strategies on tiny learnable data: they learn, keep the
backbone frozen, resume exactly, count selections (L2P, DualPrompt), freeze CODA-P's old
components, refuse a task without a DualPrompt E-prompt, work with Avalanche plugins and log to MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cl_utils import make_benchmark, tiny_backbone
from mlflow_utils import fresh_store
from test_strategies import acc_matrix, run

from avalanche_promptmoe import CODAPromptStrategy, DualPromptStrategy, L2PStrategy

COMMON = dict(num_classes=6, train_mb_size=16, train_epochs=2, device="cpu", loggers=[], progress=False, lr=0.01)
SMALL = {
    L2PStrategy: dict(layers=(0, 1), pool_size=6, length=4, top_k=2),
    DualPromptStrategy: dict(g_layers=(0,), g_length=2, e_layers=(1, 2), pool_size=3, e_length=4),
    CODAPromptStrategy: dict(layers=(0, 1), components_per_task=4, length=4),
}


def make(cls, seed=0, **kw):
    return cls(backbone=tiny_backbone(), seed=seed, **{**COMMON, **SMALL[cls], **kw})


@pytest.mark.parametrize("cls", list(SMALL))
def test_learns_three_experiences_with_a_frozen_backbone(cls):
    bm = make_benchmark()
    s = make(cls, train_epochs=6)
    before = {k: v.clone() for k, v in s.model.vit.backbone.state_dict().items()}
    A = run(s, bm)
    # above chance on the first experience (2 classes) and on the second among the 4 seen classes
    assert A.shape == (3, 3) and A[0, 0] > 0.5 and A[1, 1] > 0.25, A
    assert all(torch.equal(before[k], v) for k, v in s.model.vit.backbone.state_dict().items())


@pytest.mark.parametrize("cls", list(SMALL))
def test_resume_is_exact(cls, tmp_path):
    bm = make_benchmark()
    full = make(cls)
    run(full, bm, stop=1)
    path = full.save_checkpoint(tmp_path / "after0.pt")
    run(full, bm, start=1)
    resumed = make(cls, seed=5)  # the checkpoint restores the seeded generator too (the seed change opted in)
    assert resumed.resume_from(path, allow_seed_change=True) == 1
    run(resumed, bm, start=1)
    assert (acc_matrix(full) == acc_matrix(resumed)).all()
    ours, theirs = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("vit."))


def test_selection_counts_of_l2p_and_dualprompt_and_none_for_coda():
    bm = make_benchmark()
    n = len(bm.train_stream[0].dataset)
    l2p = make(L2PStrategy)
    assert l2p.expert_usage().shape == (2, 1, 6) and int(l2p.expert_usage().sum()) == 0
    l2p.train(bm.train_stream[0], eval_streams=[])
    counts = l2p.expert_usage()
    assert counts[:, 0].sum(dim=1).tolist() == [2 * n * 2] * 2  # epochs · samples · top_k per layer
    dual = make(DualPromptStrategy)
    for t in range(2):
        dual.train(bm.train_stream[t], eval_streams=[])
    usage = dual.expert_usage()[:, 0]  # rows: blocks 0 (G only), 1, 2 (E)
    assert usage[0].sum() == 0
    assert usage[1:].tolist() == [[2 * n, 2 * n, 0]] * 2  # in training each task uses its own E-prompt
    coda = make(CODAPromptStrategy)
    coda.train(bm.train_stream[0], eval_streams=[])
    assert coda.expert_usage() is None


def test_dualprompt_inference_picks_per_layer_and_an_oracle_task_id_overrides():
    bm = make_benchmark()
    s = make(DualPromptStrategy)
    run(s, bm, stop=2)
    x = torch.stack([bm.test_stream[1].dataset[i][0] for i in range(6)])
    s.model.eval()
    with torch.no_grad():
        s.model(x)
        picks = {layer: r.indices[:, 0] for layer, r in s.model.last_routing.items()}
        cos = {layer: r.scores for layer, r in s.model.last_routing.items()}
        assert all(torch.equal(picks[layer], cos[layer].argmax(1)) for layer in picks)
        oracle = s.model(x, torch.zeros(6, dtype=torch.long))
        assert all(bool((r.indices == 0).all()) for r in s.model.last_routing.values())
        assert torch.equal(oracle, s.model(x, 0))


def test_dualprompt_needs_a_pool_entry_per_task():
    bm = make_benchmark()
    s = make(DualPromptStrategy, pool_size=2)
    run(s, bm, stop=2)
    with pytest.raises(ValueError, match="pool_size=2"):
        s.train(bm.train_stream[2], eval_streams=[])


def test_coda_adds_components_per_task_and_freezes_the_old_ones():
    bm = make_benchmark()
    s = make(CODAPromptStrategy)
    s.train(bm.train_stream[0], eval_streams=[])
    first = [p.detach().clone() for p in (s.model.comp_prompts[0], s.model.comp_keys[0], s.model.comp_attn[0])]
    s.train(bm.train_stream[1], eval_streams=[])
    assert s.model.num_tasks == 2 and s.model.components()[1].shape == (2, 8, 64)
    after = (s.model.comp_prompts[0], s.model.comp_keys[0], s.model.comp_attn[0])
    assert all(torch.equal(a, b) and not b.requires_grad for a, b in zip(first, after))
    assert s.trainable_parameter_count() == 2 * 4 * (4 * 64 + 2 * 64) + 6 * 64 + 6
    wide = make(CODAPromptStrategy, components_per_task=40)  # 2 x 40 components > width 64
    wide.model.add_task()
    with pytest.raises(ValueError, match="cannot be orthogonalised"):
        wide.model.add_task()


def test_with_an_avalanche_replay_plugin():
    from avalanche.training.plugins import ReplayPlugin

    bm = make_benchmark()
    replay = ReplayPlugin(mem_size=12)
    s = make(L2PStrategy, plugins=[replay])
    A = run(s, bm, stop=2)
    assert len(replay.storage_policy.buffer) == 12 and A[1, 0] > 0


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
@pytest.mark.parametrize("cls", [L2PStrategy, CODAPromptStrategy])
def test_logs_to_mlflow(cls, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from avalanche_promptmoe.logging import MLflowLogger

    uri = fresh_store(tmp_path / "store")
    bm = make_benchmark(n_exp=2, per_class=8, test_per_class=4)
    logger = MLflowLogger("zoo", tracking_uri=uri)
    s = make(cls, num_classes=4, train_epochs=1, loggers=[logger])
    run(s, bm)
    logger.close()
    r = MlflowClient(uri).get_run(logger.run_id)
    assert r.data.params["method.name"] == cls.method_name and r.data.tags["method"] == cls.method_name
    assert r.data.metrics["final/trainable_params"] == s.trainable_parameter_count()
    usage = {a.path for a in MlflowClient(uri).list_artifacts(logger.run_id, "expert_usage")}
    assert bool(usage) == (cls is L2PStrategy)


def test_kit_script_runs_the_method(tmp_path):
    """``experiments/run_tinyimagenet32.py --method codaprompt`` on a sliver of the kit (the names are
    registered; every shipped config validates in tests/test_experiments.py)."""
    method = "codaprompt"
    import runpy
    import sys

    exp = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(exp))
    import runner

    spec = runpy.run_path(str(exp / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]
    summary = runner.run(spec, ["--method", method, "--device", "cpu", "--run-dir", str(tmp_path), "--no-mlflow",
                                "--set", "benchmark.train_per_class=2", "--set", "benchmark.test_per_class=2",
                                "--set", "benchmark.n_experiences=2", "--set", "method.epochs=1"])
    assert len(summary["accuracy_matrix"]) == 2 and 0.0 <= summary["faa"] <= 1.0


def test_bad_settings_are_named():
    from avalanche_promptmoe.methods.codaprompt.config import CODAPromptConfig
    from avalanche_promptmoe.methods.dualprompt.config import DualPromptConfig
    from avalanche_promptmoe.methods.l2p.config import L2PConfig

    with pytest.raises(ValueError, match="length: half keys, half values"):
        L2PConfig(length=7)
    with pytest.raises(ValueError, match="top_k"):
        L2PConfig(pool_size=4, top_k=5)
    with pytest.raises(ValueError, match="g_length"):
        DualPromptConfig(g_length=3)
    DualPromptConfig(g_layers=(), g_length=0)  # no G-prompts at all is allowed
    with pytest.raises(ValueError, match="components_per_task"):
        CODAPromptConfig(components_per_task=0)
    assert L2PConfig(recipe="official").pull_reduction == "cross_sum" and L2PConfig().pull_reduction == "mean"
    assert DualPromptConfig(recipe="official").pull_reduction == "sum"
