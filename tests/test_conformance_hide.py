"""HiDe-Prompt measured against its official code (thu-ml/HiDe-Prompt @0ed43333).

``../shared/data/conformance/hide_official.pt`` holds the official code's weights, inputs and outputs
on a tiny random ViT (its README says what every key is and which official function produced it).
The official weights are mapped into our HiDe model and every recorded quantity is recomputed with
our code: prompted block outputs, features and logits (B = 1 in both prefix layouts; B = 4 only in
the official reshape, ``prefix_layout="hide_official"``), the WTP regulariser and its gradient, one
WTP loss/gradient with prompt momentum, the TII head and its first stage, the TII replay and TAP
(the stored draws fed to our loop), the WTP step/cosine schedules. Tolerances as the README's §5.
A missing golden file is a failure, not a skip (CI has ``../shared``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cl_utils import record_optimizers

from avalanche_promptmoe.engine import TaskIdentityHead, mask_logits
from avalanche_promptmoe.methods.baselines.config import HiDeBaselineConfig
from avalanche_promptmoe.methods.baselines.model import TaskPrefixModel
from avalanche_promptmoe.training.hide import HiDePhases
from avalanche_promptmoe.training.phases import (
    ClassGaussians,
    train_head_on_gaussians,
    train_head_on_images,
)
from avalanche_promptmoe.training.schedules import build_lr_scheduler

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "conformance" / "hide_official.pt"
ATOL = 1e-5  # activations, features, logits (README §5)


@pytest.fixture(scope="module")
def g() -> dict:
    assert GOLDEN.is_file(), f"the official HiDe-Prompt goldens are missing: expected {GOLDEN} (../shared/data)"
    return torch.load(GOLDEN, weights_only=False)


def _backbone(g: dict) -> torch.nn.Module:
    import timm

    c = g["cfg"]
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=c["img"], patch_size=c["patch"],
        embed_dim=c["dim"], depth=c["depth"], num_heads=c["heads"],
    )
    state = {k: v for k, v in g["model_state"].items() if not k.startswith(("e_prompt.", "head."))}
    vit.load_state_dict(state, strict=True)
    return vit.eval()


def _tii_state(official: dict) -> dict:
    """Official TII module names (``mlp.net.0.0``, ``mlp.net.1.0``, ``mlp.norm``, ``head``) → ours."""
    names = {"mlp.net.0.0": "mlp.0", "mlp.net.1.0": "mlp.2", "mlp.norm": "norm", "head": "classifier"}
    out = {}
    for k, v in official.items():
        prefix, _, leaf = k.rpartition(".")
        if prefix in names:
            out[f"{names[prefix]}.{leaf}"] = v
    return out


def build(g: dict, layout: str, momentum: float = 0.0) -> TaskPrefixModel:
    """Our HiDe model holding the official weights: task t's prompt = official slot t, with the
    official (layer, K/V, slot, token, head, Dh) axes moved to ours (layer, K/V, head, token, Dh)."""
    a = g["args"]
    official = g["model_state"]["e_prompt.prompt"]
    model = TaskPrefixModel(_backbone(g), a["nb_classes"], layers=a["e_prompt_layer_idx"], length=a["length"],
                            prefix_layout=layout)
    for _ in range(a["size"]):
        model.add_task()  # earlier tasks' prompts frozen, the last one trainable (task 2 is training)
    with torch.no_grad():
        for t in range(a["size"]):
            model.prompts[t].copy_(official[:, :, t].permute(0, 1, 3, 2, 4))
        model.head.weight.copy_(g["model_state"]["head.weight"])
        model.head.bias.copy_(g["model_state"]["head.bias"])
    model.tii.load_state_dict(_tii_state(g["original_state"]), strict=True)
    model.momentum = momentum
    return model.eval()


def _run(model: TaskPrefixModel, x: torch.Tensor, task) -> dict:
    """attn_out (each prompted/unprompted block's attention output), features, logits."""
    attn: dict[int, torch.Tensor] = {}
    hooks = [blk.attn.register_forward_hook(lambda _m, _i, out, i=i: attn.__setitem__(i, out))
             for i, blk in enumerate(model.vit.backbone.blocks)]
    try:
        feats = model.forward_features(x, task)
        logits = model.head(feats)
    finally:
        for h in hooks:
            h.remove()
    return {"attn_out": attn, "features": feats, "logits": logits}


def _assert_close(ours: dict, ref: dict, where: str) -> None:
    for i, t in ref["attn_out"].items():
        torch.testing.assert_close(ours["attn_out"][i], t, atol=ATOL, rtol=0, msg=lambda m, i=i: f"{where} attn_out[{i}]: {m}")
    for k in ("features", "logits"):
        torch.testing.assert_close(ours[k], ref[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{where} {k}: {m}")


def _task_arg(fw: dict, rows: slice):
    return fw["prompt_id"][rows, 0] if "prompt_id" in fw else fw["task_id"]


FORMS = ("train_momentum", "train_raw", "infer")


# ---------------------------------------------------------------------------------------- forwards
@pytest.mark.parametrize("layout", ["kv", "hide_official"])
@pytest.mark.parametrize("form", FORMS)
@torch.no_grad()
def test_single_sample_forward_matches_the_official_code_in_both_layouts(g, form, layout):
    """B = 1: the official reshape is harmless, so both layouts reproduce ``single``."""
    ref = g[form]
    model = build(g, layout, momentum=ref["fw"].get("prompt_momentum", 0.0))
    for b, single in enumerate(ref["single"]):
        _assert_close(_run(model, g["X"][b : b + 1], _task_arg(ref["fw"], slice(b, b + 1))), single, f"{form}[{b}]")


@pytest.mark.parametrize("form", FORMS)
@torch.no_grad()
def test_batched_forward_matches_the_official_reshape(g, form):
    """B = 4: only ``prefix_layout="hide_official"`` reproduces the official batch (training form with
    and without momentum, and inference with per-sample TII ids ``[0, 2, 1, 2]``)."""
    ref = g[form]
    model = build(g, "hide_official", momentum=ref["fw"].get("prompt_momentum", 0.0))
    _assert_close(_run(model, g["X"], _task_arg(ref["fw"], slice(None))), ref["batch"], f"{form} batch")
    # two virtual ranks of 4 in one batch of 8: the reshape acts per rank, each rank the official batch
    model.prefix_chunk = 4
    task = _task_arg(ref["fw"], slice(None))
    twice = _run(model, torch.cat([g["X"], g["X"]]), torch.cat([task, task]) if torch.is_tensor(task) else task)
    for half in (slice(0, 4), slice(4, 8)):
        torch.testing.assert_close(twice["logits"][half], ref["batch"]["logits"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_our_kv_layout_is_per_sample_correct_where_the_official_batch_is_not(g):
    """Our default layout gives every sample of a batch its own result (= the official B = 1 runs),
    which differs from the official B = 4 logits (the documented difference, docs/methods.md)."""
    ref = g["infer"]
    model = build(g, "kv")
    ours = _run(model, g["X"], _task_arg(ref["fw"], slice(None)))
    singles = torch.cat([s["logits"] for s in ref["single"]])
    torch.testing.assert_close(ours["logits"], singles, atol=ATOL, rtol=0)
    assert (ours["logits"] - ref["batch"]["logits"]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------- WTP
class _Phases(HiDePhases):
    """Our HiDe phase mixin on the goldens' task layout (3 tasks of 5 classes), without a strategy."""

    def __init__(self, g: dict, *, task_id: int, train_mb_size: int, **cfg) -> None:
        a = g["args"]
        self.cfg = HiDeBaselineConfig(contrastive_weight=a["reg"], lr=a["lr"], tii_lr=a["lr"], **cfg)
        self.task_id, self.train_mb_size = task_id, train_mb_size
        self.task_classes = [list(range(5 * t, 5 * t + 5)) for t in range(task_id + 1)]
        self._init_hide()
        for c, means in g["orth_task2"]["means"].items():  # the official cls_mean: 10 centroids per class
            self.tap_stats.means[c] = torch.stack(means).float()


def _rel_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Gradients: ``max|Δ| ≤ 1e-5 · max|ref|`` (README §5)."""
    err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max|Δ| = {err:.3g} > 1e-5 × {scale:.3g}"


def _loss_close(ours: torch.Tensor, ref: float, what: str) -> None:
    ours = float(ours.detach()) if isinstance(ours, torch.Tensor) else float(ours)
    assert abs(ours - ref) <= 1e-5 + 1.3e-6 * abs(ref), f"{what}: {ours} vs official {ref}"


@pytest.mark.parametrize(("key", "task_id"), [("orth_task0", 0), ("orth_task2", 2)])
def test_contrastive_regulariser_and_its_gradient(g, key, task_id):
    """``orth_loss`` (× reg): over the batch alone at task 0, over [stored centroids; batch] after."""
    phases = _Phases(g, task_id=task_id, train_mb_size=4)
    f = g["orth_features"].clone().requires_grad_(True)
    loss = phases.contrastive_term(f)
    loss.backward()
    _loss_close(loss, g[key]["loss"], key)
    _rel_close(f.grad, g[key]["grad"], f"{key} grad")


def test_regulariser_is_computed_per_virtual_rank(g):
    """``world_size=2`` at a global batch of 8: two ranks of 4, each the official per-GPU loss; the
    mean over ranks gives each rank's features half the official gradient (DDP averages)."""
    phases = _Phases(g, task_id=2, train_mb_size=8, world_size=2)
    f = torch.cat([g["orth_features"], g["orth_features"]]).requires_grad_(True)
    loss = phases.contrastive_term(f)
    loss.backward()
    _loss_close(loss, g["orth_task2"]["loss"], "two identical ranks")
    _rel_close(f.grad, torch.cat([g["orth_task2"]["grad"]] * 2) / 2, "per-rank grad")
    whole = _Phases(g, task_id=2, train_mb_size=8).contrastive_term(f.detach())
    assert abs(float(whole) - g["orth_task2"]["loss"]) > 1e-3  # one 8-sample "rank" is another loss


@pytest.mark.parametrize(("key", "rows"), [("wtp_B1", slice(0, 1)), ("wtp_B4", slice(None))])
def test_wtp_step_loss_and_gradients_with_prompt_momentum(g, key, rows):
    """One WTP step at task 2: CE on logits masked to classes 10–14 + the regulariser, through the
    momentum-mixed prompt; ``.grad`` of the task's prompt and the head before clipping."""
    model = build(g, "hide_official", momentum=g["args"]["prompt_momentum"]).train()
    x, y = g["X"][rows], g["wtp_Y"][rows]
    phases = _Phases(g, task_id=2, train_mb_size=len(y))
    allowed = torch.zeros(15, dtype=torch.bool)
    allowed[10:15] = True
    feats = model.forward_features(x, 2)
    loss = F.cross_entropy(mask_logits(model.head(feats), allowed), y) + phases.contrastive_term(feats)
    loss.backward()
    _loss_close(loss, g[key]["loss"], key)
    _rel_close(model.prompts[2].grad.permute(0, 1, 3, 2, 4), g[key]["g_prompt"], f"{key} prompt grad")
    _rel_close(model.head.weight.grad, g[key]["g_head"], f"{key} head grad")


# ---------------------------------------------------------------------------------------- TII
@torch.no_grad()
def test_tii_head_on_unprompted_features(g):
    model = build(g, "kv")
    feats = model.plain_features(g["X"])
    torch.testing.assert_close(feats, g["tii"]["pre_logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.tii(feats), g["tii"]["logits"], atol=ATOL, rtol=0)


def test_tii_first_stage_one_epoch(g):
    """``hide_tii_engine.train_one_epoch`` over two batches: CE masked to task 0, clip 1.0, Adam at
    ``0.0005 × batch / 256`` — our lr rule gives the official lr, our loop the official parameters."""
    ref = g["tii_stage1"]
    phases = _Phases(g, task_id=0, train_mb_size=g["args"]["batch_size"], lr_rank_scaling=True)
    lr = phases.scaled_lr(0.0005)
    assert abs(lr - ref["lr"]) <= 1e-12
    model = build(g, "kv")
    model.tii.load_state_dict(_tii_state(ref["params0"]), strict=True)
    train_head_on_images(model.tii, model.plain_features, lambda _e: ref["batches"], classes=range(5),
                         num_classes=15, epochs=1, lr=lr, clip_grad=ref["clip"])
    for k, v in _tii_state(ref["params1"]).items():
        torch.testing.assert_close(model.tii.state_dict()[k], v, atol=2e-7, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------------------------- TAP, TII replay
def _gaussians(ref: dict) -> ClassGaussians:
    """The official per-class centroid lists (float64) as our statistics: the sampler's variance is
    ``(var + 1e-4)`` in float64, cast to float32, as ``MultivariateNormal(…).float()`` receives it."""
    stats = ClassGaussians()
    for c in ref["cls_mean"]:
        stats.means[c] = torch.stack(ref["cls_mean"][c]).float()
        stats.variances[c] = (torch.stack(ref["cls_cov"][c]) + 1e-4).float()
        stats.weights[c] = torch.full((len(ref["cls_mean"][c]),), 1.0 / len(ref["cls_mean"][c]))
    return stats


def _replay(g, monkeypatch, key: str, head: torch.nn.Module, seed: int, lr: float) -> tuple[list, list, list]:
    """Our official-sampling replay with the official global seed: (inputs, targets, lr) per iteration."""
    made = record_optimizers(monkeypatch, "SGD")
    ref, seen = g[key], []
    hook = head.register_forward_hook(lambda _m, i, _o: seen.append((i[0].clone(), made[-1].param_groups[0]["lr"])))
    targets: list[torch.Tensor] = []
    original = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda logits, y, *a, **k: (targets.append(y.clone()), original(logits, y, *a, **k))[1])
    torch.manual_seed(seed)
    train_head_on_gaussians(head, _gaussians(ref), classes=range(15), num_classes=15, epochs=g["args"]["crct_epochs"],
                            lr=lr, batch_size=ref["num_sampled_pcls"], optimizer="sgd", weight_decay=0.0,
                            sampling="official", previous_classes=10, schedule="cosine")
    hook.remove()
    return [x for x, _ in seen], targets, [lr for _, lr in seen]


def _check_draws(ref: dict, inp: list, tgt: list, lrs: list) -> None:
    assert len(inp) == len(ref["inp"]) == 30  # 3 epochs × 10 classes of the earlier tasks
    for i, (x, y) in enumerate(zip(inp, tgt)):
        # the official sampler's scale is cholesky(diag(var + 1e-4)), ours sqrt(var + 1e-4): equal up to 1 ulp
        torch.testing.assert_close(x, ref["inp"][i], atol=ATOL, rtol=0, msg=lambda m, i=i: f"iteration {i}: {m}")
        assert torch.equal(y, ref["tgt"][i]), f"iteration {i}: targets differ"
    assert np.allclose(lrs, ref["lr"], rtol=0, atol=1e-12)


def test_tap_draws_schedule_and_head(g, monkeypatch):
    """TAP (seed 7): per epoch ``batch × 5`` samples per centroid (zero-variance centroids skipped),
    shuffled, one iteration per earlier-task class; SGD(0.9), wd 0.0, cosine per epoch."""
    ref = g["tap"]
    head = torch.nn.Linear(64, 15)
    head.load_state_dict(ref["head0"])
    _check_draws(ref, *_replay(g, monkeypatch, "tap", head, 7, g["args"]["ca_lr"]))
    for k, v in ref["head1"].items():
        torch.testing.assert_close(head.state_dict()[k], v, atol=1e-6, rtol=0)


def test_tii_replay_draws_schedule_and_head(g, monkeypatch):
    """TII replay (seed 11): ``batch`` samples per centroid, the TII MLP and head trained."""
    ref = g["tii_replay"]
    tii = TaskIdentityHead(64, 15)
    tii.load_state_dict(_tii_state(ref["params0"]), strict=True)
    _check_draws(ref, *_replay(g, monkeypatch, "tii_replay", tii, 11, g["args"]["ca_lr"]))
    for k, v in _tii_state(ref["params1"]).items():
        torch.testing.assert_close(tii.state_dict()[k], v, atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(("key", "schedule", "epochs", "lr_min"),
                         [("step_cifar", "step", 50, 0.0), ("cosine_imr", "cosine_timm", 150, 1e-5)])
def test_wtp_schedule_per_epoch(g, key, schedule, epochs, lr_min):
    """The lr each WTP epoch trains at (base 0.015): ``step`` (×0.1 from epoch 31) and ``cosine_timm``
    (timm's cosine one epoch late), both as HiDe's loop steps timm's schedulers."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.015)
    sched, per_iter = build_lr_scheduler(opt, schedule, epochs=epochs, lr_min=lr_min, step_epochs=30, step_gamma=0.1)
    assert not per_iter
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(lrs, g["wtp_sched"][key].numpy(), rtol=0, atol=1e-12)
