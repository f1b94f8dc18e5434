"""SMoPE against the official code's recorded outputs (issue #17).

``../shared/data/conformance/smope_official.pt`` holds inputs, weights and outputs of the official
SMoPE (github.com/Minhchuyentoancbn/SMoPE @27b982c5) on a tiny random ViT (its README says what
every key is). We map the official weights into our ``SMoPEModel`` and check every recorded
quantity: scores, selections, counts and sets exactly; block outputs, features, logits, losses,
gradients, TAP draws and head, lr schedules to the README's tolerances (float32).

Layouts. Official prompts are one ``(1, Dh)`` parameter per (layer l, expert i, head h), stored
stacked ``(L, E, H, Dh)``; our pool is ``(L, E, 1, H, Dh)`` (one key / value token per expert):
``pool.keys[l, i, 0, h] = pk[l, i, h]``. Official counts and frequent sets are ``(L, H, E)`` —
the layout of our ``ExpertUsage``. Backbone keys are timm's (``strict=True``).

Where the official code and our default differ (the count pass's live exclusion, the schedules'
one-iteration lag and the TAP's first lr), the ``recipe="official"`` code path must match the
goldens, and the default path is checked against its documented value (docs/methods.md "SMoPE").
A missing golden file is a failure, not a skip (CI has ``../shared``).
"""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_promptmoe.engine.heads import mask_logits
from avalanche_promptmoe.kit import default_kit_dir
from avalanche_promptmoe.methods.smope.config import SMoPEConfig
from avalanche_promptmoe.methods.smope.model import SMoPEModel
from avalanche_promptmoe.methods.smope.strategy import count_batch, router_loss
from avalanche_promptmoe.routing import ExpertUsage
from avalanche_promptmoe.training.phases import VAR_EPS, ClassGaussians, train_head_on_gaussians
from avalanche_promptmoe.training.plugins import PrototypeLossPlugin
from avalanche_promptmoe.training.schedules import build_lr_scheduler

GOLDEN = default_kit_dir() / "conformance" / "smope_official.pt"
GOLDEN_SHA256 = "3c41032a8af9dd5f233c4a584b78bf968400d90f6bd973388bb01978614272af"  # README.md, table
ATOL = 1e-5  # activations, scores, features, logits (README §5)
LAYERS, E, H, K, EPS = 6, 25, 2, 5, 0.4
OLD_CLASSES, NEW_CLASSES = range(5), range(5, 10)


@pytest.fixture(scope="module")
def golden() -> dict:
    assert GOLDEN.is_file(), (
        f"{GOLDEN} is missing: the official SMoPE goldens live in ../shared/data/conformance/ beside the "
        "checkout (or $AVALANCHE_PROMPTMOE_KIT/conformance/); CI has them"
    )
    return torch.load(GOLDEN, weights_only=False)


def _close(a: Tensor, b: Tensor, atol: float = ATOL) -> None:
    diff = (a.detach().double() - b.double()).abs().max().item()
    assert diff <= atol, f"max |Δ| = {diff:.3g} > {atol:g}"


def _grad_close(ours: Tensor, ref: Tensor) -> None:
    """README §5: max |Δ| ≤ 1e-5 · max |ref| (gk is ~1e-4, a bare atol would test nothing)."""
    scale = ref.abs().max().item()
    assert scale > 0
    diff = (ours.double() - ref.double()).abs().max().item()
    assert diff <= 1e-5 * scale, f"max |Δ| = {diff:.3g} > 1e-5 · {scale:.3g}"


def _set_prompts(model: SMoPEModel, pk: Tensor, pv: Tensor) -> None:
    """Official ``(L, E, H, Dh)`` stacks → our pool ``(L, E, 1, H, Dh)``."""
    with torch.no_grad():
        model.pool.keys.copy_(pk.unsqueeze(2))
        model.pool.values.copy_(pv.unsqueeze(2))


def _model(g: dict, pk: Tensor | None = None, pv: Tensor | None = None) -> SMoPEModel:
    """Our SMoPE model holding the official backbone, head and prompts (``pk``/``pv``: default the live
    prompts), usage state of the start of task 1 (``used_frequently``, zero counts of ``counts_task0``)."""
    c = g["cfg"]
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=c["img"], patch_size=c["patch"], embed_dim=c["dim"],
        depth=c["depth"], num_heads=c["heads"], num_classes=0,
    )
    vit.load_state_dict(g["feat_state"], strict=True)
    model = SMoPEModel(vit, c["classes"], layers=range(LAYERS), num_experts=E, top_k=K, epsilon=EPS)
    _set_prompts(model, g["pk"] if pk is None else pk, g["pv"] if pv is None else pv)
    model.head.load_state_dict(g["last_state"])
    model.set_usage(g["used_frequently"], g["counts_task0"] == 0)
    return model


def _run(model: SMoPEModel, x: Tensor, mode: str) -> dict[int, Tensor]:
    """Forward in ``mode`` (train / eval / dense); returns each block's attention output."""
    model.train(mode != "eval")
    model.dense = mode == "dense"
    attn: dict[int, Tensor] = {}
    hooks = [
        blk.attn.register_forward_hook(lambda _m, _i, out, i=i: attn.__setitem__(i, out.detach()))
        for i, blk in enumerate(model.vit.backbone.blocks)
    ]
    try:
        model.logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return attn


def test_golden_file_is_the_recorded_one():
    assert GOLDEN.is_file(), f"{GOLDEN} is missing (CI has ../shared/data/conformance/)"
    assert hashlib.sha256(GOLDEN.read_bytes()).hexdigest() == GOLDEN_SHA256


@pytest.mark.parametrize("mode", ["train", "eval", "dense"])
def test_forward_matches_the_official_outputs(golden, mode):
    """Block outputs, features, logits; for sparse modes also scores, penalised scores and top-K sets.
    train: ε = 0.4 noise on ``used_frequently``; eval: ε' = 2 on zero-count experts; dense: all 25."""
    ref, model = golden[mode], _model(golden)
    with torch.no_grad():
        attn = _run(model, golden["X"], mode)
    assert sorted(attn) == sorted(ref["attn_out"]) == list(range(7))
    for i in attn:
        _close(attn[i], ref["attn_out"][i])
    _close(model.last_features, ref["features"])
    _close(model.logits, ref["logits"])
    if mode == "dense":
        return
    for layer in range(LAYERS):
        scores = model.last_scores[layer]
        _close(scores, ref["scores"][layer])
        _close(model.selection_scores(layer, scores), ref["noisy_scores"][layer])
        assert torch.equal(model.last_routing[layer].indices.sort(-1).values, ref["topk"][layer]), layer


def _count_pass(model: SMoPEModel, usage: ExpertUsage, batches, *, live: bool) -> list[Tensor]:
    """Our count pass over ``batches``; the cumulative counts after each batch."""
    model.eval()
    out = []
    with torch.no_grad():
        for x in batches:
            count_batch(model, usage, x, live=live)
            out.append(usage.counts + usage.pending)
    return out


def _replay_generator_1() -> dict[str, object]:
    """``Generator(1)``'s draws in the official order (README §3 "Seeds"): the 4 count batches, the
    prompt perturbation (loop l, i, h: ``0.05·randn(1, 32)`` for pk, then pv), ``X``, then the 3
    unsaved batches of the second count pass."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(4)]
    dk, dv = torch.empty(LAYERS, E, H, 32), torch.empty(LAYERS, E, H, 32)
    for layer in range(LAYERS):
        for i in range(E):
            for h in range(H):
                dk[layer, i, h] = 0.05 * torch.randn(1, 32, generator=g)[0]
                dv[layer, i, h] = 0.05 * torch.randn(1, 32, generator=g)[0]
    x = torch.randn(4, 3, 32, 32, generator=g)
    second = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(3)]
    return {"count_batches": batches, "dk": dk, "dv": dv, "X": x, "second": second}


def test_replayed_inputs_are_the_recorded_ones(golden):
    """The replay that gives the second pass's (unsaved) batches reproduces every recorded draw."""
    r = _replay_generator_1()
    assert all(torch.equal(a, b) for a, b in zip(r["count_batches"], golden["count_batches"], strict=True))
    assert torch.equal(golden["prompt_init"]["pk"] + r["dk"], golden["pk"])
    assert torch.equal(golden["prompt_init"]["pv"] + r["dv"], golden["pv"])
    assert torch.equal(r["X"], golden["X"])


def test_official_count_pass_excludes_live_and_matches_every_count(golden):
    """recipe="official": live exclusion (``count_batch(live=True)``), counts on the clean top-K,
    cumulative across tasks; frequent = ≥ mean of the non-zero counts, sticky."""
    init = golden["prompt_init"]
    model = _model(golden, init["pk"], init["pv"])
    model.set_usage(torch.zeros(LAYERS, H, E, dtype=torch.bool), torch.ones(LAYERS, H, E, dtype=torch.bool))
    usage = ExpertUsage(LAYERS, H, E, rule="above_mean")
    per_batch = _count_pass(model, usage, golden["count_batches"], live=True)
    for ours, ref in zip(per_batch, golden["counts_task0_per_batch"], strict=True):
        assert torch.equal(ours, ref)
    usage.commit()
    assert torch.equal(usage.counts, golden["counts_task0"])
    assert (usage.counts.sum(-1) == 4 * 4 * K).all()
    assert torch.equal(usage.frequent(), golden["used_frequently"]) and int(usage.frequent().sum()) == 90
    # start of task 1 (process_task_count), then the task-1 prompts and a second pass
    _set_prompts(model, golden["pk"], golden["pv"])
    model.set_usage(usage.frequent(), usage.never_selected())
    _count_pass(model, usage, _replay_generator_1()["second"], live=True)
    usage.commit()
    assert torch.equal(usage.counts, golden["counts_task1_cum"])
    assert torch.equal(usage.frequent(), golden["used_frequently_2"]) and int(usage.frequent().sum()) == 102


def test_default_count_pass_fixes_the_exclusion_before_the_pass(golden):
    """Ours (recipe="ours") excludes only the experts with zero *committed* count, fixed for the
    whole pass: the counts must not depend on the batch order, which the official live exclusion
    does (README §6.1). From zero counts nothing is excluded, so the task-0 pass equals a pass
    without exclusion: layer 0 (no exclusion effect upstream) matches the official counts, later
    layers differ where an expert's zero / non-zero status flipped during the official pass."""
    init = golden["prompt_init"]
    model = _model(golden, init["pk"], init["pv"])
    model.set_usage(torch.zeros(LAYERS, H, E, dtype=torch.bool), torch.ones(LAYERS, H, E, dtype=torch.bool))
    forward = ExpertUsage(LAYERS, H, E, rule="above_mean")
    ours = _count_pass(model, forward, golden["count_batches"], live=False)[-1]
    backward = ExpertUsage(LAYERS, H, E, rule="above_mean")
    assert torch.equal(_count_pass(model, backward, golden["count_batches"][::-1], live=False)[-1], ours)
    ref = golden["counts_task0"]
    assert torch.equal(ours[0], ref[0])
    assert (ours.sum(-1) == ref.sum(-1)).all()
    assert int((ours != ref).sum()) == 20  # README §6.1: 20 of 300 counts differ


@pytest.mark.parametrize("which", ["router", "proto"])
def test_router_and_prototype_losses(golden, which):
    """``router_loss`` on the train-mode scores (μ_router = 1), the prototype loss through our
    ``PrototypeLossPlugin`` (old keys ``old_pk``, old frequent set ``used_frequently``, μ_old = 1)."""
    model = _model(golden)
    _run(model, golden["X"], "train")
    if which == "router":
        loss = router_loss(model, EPS)
    else:
        loss = _proto_term(model, golden)
    ref = float(golden[f"{which}_loss"])
    assert loss.item() == pytest.approx(ref, rel=1.3e-6, abs=1e-5)


def _proto_term(model: SMoPEModel, golden: dict, weight: float = 1.0) -> Tensor:
    plugin = PrototypeLossPlugin(weight=weight)
    plugin.old_keys, plugin.old_frequent = golden["old_pk"], golden["used_frequently"]
    fake = type("S", (), {})()
    fake.model, fake.loss = model, torch.zeros(())
    plugin.before_backward(fake)
    return fake.loss


@pytest.mark.parametrize(("key", "mu"), [("grad_ce", 0.0), ("grad_full", 0.1), ("grad_paper", 1e-5)])
def test_training_loss_and_gradients(golden, key, mu):
    """One sparse train-mode step's loss (CE on the task-1 classes, old classes masked, + μ_router ·
    router + μ_old · prototype) and the gradients of keys, values and head weight (no step)."""
    ref, model = golden[key], _model(golden)
    _run(model, golden["X"], "train")
    allowed = torch.zeros(10, dtype=torch.bool)
    allowed[list(NEW_CLASSES)] = True
    ce = F.cross_entropy(mask_logits(model.logits, allowed), golden["Y"])
    loss = ce + mu * router_loss(model, EPS) + _proto_term(model, golden, mu)
    loss.backward()
    assert ce.item() == pytest.approx(ref["ce"], rel=1.3e-6, abs=1e-5)
    assert loss.item() == pytest.approx(ref["loss"], rel=1.3e-6, abs=1e-5)
    _grad_close(model.pool.keys.grad[:, :, 0], ref["gk"])
    _grad_close(model.pool.values.grad[:, :, 0], ref["gv"])
    _grad_close(model.head.weight.grad, ref["g_head_w"])


def _tap_stats(tap: dict) -> ClassGaussians:
    """Official one-centroid statistics (float64 mean, raw variance) → ours (variance + 1e-4)."""
    stats = ClassGaussians()
    for c in tap["cls_mean"]:
        stats.means[c] = torch.stack(tap["cls_mean"][c]).float()
        stats.variances[c] = torch.stack(tap["cls_cov"][c]).float() + VAR_EPS
        stats.weights[c] = torch.ones(len(tap["cls_mean"][c]))
    return stats


def _run_tap(tap: dict, first_lr: float | None) -> tuple[nn.Linear, list[Tensor], list[float]]:
    """Our TAP (``train_head_on_gaussians``, official sampling) from ``head0`` on the recorded
    statistics; returns the head after, the head's input at each step and each step's lr."""
    head = nn.Linear(64, 10)
    head.load_state_dict(tap["head0"])
    inputs: list[Tensor] = []
    lrs: list[float] = []
    head.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    opt_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return opt_step(self, *args, **kwargs)

    cfg = SMoPEConfig()  # the TAP's settings: AdamW, tap_lr 1e-5, wd 5e-4, cosine_iter to 1e-6, 1 centroid
    torch.manual_seed(5)  # the official run seeds the global RNG before the TAP (README §3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", recording_step)
        train_head_on_gaussians(
            head, _tap_stats(tap), classes=range(10), num_classes=10, epochs=3, lr=cfg.tap_lr,
            batch_size=8, optimizer=cfg.tap_optimizer, weight_decay=cfg.replay_weight_decay, generator=None,
            sampling="official", previous_classes=len(OLD_CLASSES), schedule=cfg.tap_lr_schedule,
            lr_min=cfg.tap_lr_min, first_lr=first_lr,
        )
    return head, inputs, lrs


def test_official_tap_draws_schedule_and_head(golden):
    """recipe="official" TAP: 8 draws per class-centroid for all 10 classes, ``randperm``, 5 AdamW
    iterations per epoch × 3 epochs; the first iteration at ``ca_lr`` = 1e-4 (the lag), then the
    cosine from 1e-5 to 1e-6 one iteration late; head after the 15 steps to 1e-6."""
    tap = golden["tap"]
    head, inputs, lrs = _run_tap(tap, first_lr=1e-4)
    assert len(inputs) == len(tap["inp"]) == 15
    for ours, ref in zip(inputs, tap["inp"]):
        _close(ours, ref)
    assert torch.allclose(torch.tensor(lrs, dtype=torch.float64), torch.tensor([float(v) for v in tap["lr"]],
                                                                                dtype=torch.float64), rtol=0, atol=1e-12)
    _close(head.weight, tap["head1"]["weight"], 1e-6)
    _close(head.bias, tap["head1"]["bias"], 1e-6)


def test_official_tap_targets_are_exact(golden):
    """The labels of each replay batch (``tgt``) are the official ones exactly (same draw order)."""
    tap = golden["tap"]
    head = nn.Linear(64, 10)
    targets: list[Tensor] = []
    orig = F.cross_entropy

    def spy(logits, y, *a, **k):
        targets.append(y.clone())
        return orig(logits, y, *a, **k)

    torch.manual_seed(5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "cross_entropy", spy)
        train_head_on_gaussians(
            head, _tap_stats(tap), classes=range(10), num_classes=10, epochs=3, lr=1e-5, batch_size=8,
            optimizer="adamw", weight_decay=5e-4, generator=None, sampling="official", previous_classes=5,
            schedule="cosine_iter", lr_min=1e-6, first_lr=1e-4,
        )
    assert len(targets) == 15
    for ours, ref in zip(targets, tap["tgt"]):
        assert torch.equal(ours, ref)


def test_default_tap_schedule_has_no_lag(golden):
    """Ours (recipe="ours"): the TAP cosine starts at ``tap_lr`` = ``ca_lr/10`` on the first
    iteration (no 10× first step, no lag): iteration k runs at the official iteration k+1's lr,
    the last at the cosine's final step. The draws are the same (same RNG order)."""
    tap = golden["tap"]
    _, inputs, lrs = _run_tap(tap, first_lr=None)
    ref = [float(v) for v in tap["lr"]]
    assert lrs[:-1] == pytest.approx(ref[1:], rel=0, abs=1e-12)
    assert lrs[0] == pytest.approx(1e-5, abs=1e-12) and ref[0] == pytest.approx(1e-4, abs=1e-12)
    for ours, r in zip(inputs, tap["inp"]):
        _close(ours, r)


def _lrs(key: str, epochs: int, *, lag: bool, iters: int = 40) -> Tensor:
    """lr of [prompt group, head group] at each iteration of our main-phase schedule (CIFAR-100)."""
    p = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    cfg = SMoPEConfig(recipe="official", lr_schedule="cosine_iter", lr_min=1e-6, lr_freeze_iters=80, lr_iter_step=40)
    opt = torch.optim.AdamW([{"params": [p[0]], "lr": cfg.lr}, {"params": [p[1]], "lr": cfg.lr * cfg.head_lr_scale}])
    sched, per_iter = build_lr_scheduler(opt, cfg.lr_schedule, epochs=epochs, iters_per_epoch=iters,
                                         lr_min=cfg.lr_min, freeze_iters=cfg.lr_freeze_iters, lag=lag)
    assert per_iter
    out = []
    for _ in range(epochs * 40):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("key", "epochs"), [("sparse", 20), ("dense_warmup", 10)])
def test_official_main_schedule(golden, key, epochs):
    """recipe="official": iteration 0 at the groups' lrs [0.025, 0.005], iterations 1–80 at 1e-6,
    then the cosine one iteration late, over ``iter_step × epochs`` = 40 × epochs iterations."""
    _close(_lrs(key, epochs, lag=True), golden["sched"][key], 1e-12)


@pytest.mark.parametrize(("key", "epochs"), [("sparse", 20), ("dense_warmup", 10)])
def test_default_main_schedule_has_no_lag(golden, key, epochs):
    """Ours: no lag (iteration 0 is the first frozen one; iteration k at the official k+1's lr),
    and the cosine spans the loader's real iterations (here 39 per epoch, drop_last on 5,000 / 128)
    instead of the yaml's 40: it reaches lr_min after 39 × epochs iterations, the official's not."""
    ref = golden["sched"][key]
    ours = _lrs(key, epochs, lag=False)
    _close(ours[:-1], ref[1:], 1e-12)
    real = _lrs(key, epochs, lag=False, iters=39)
    assert real[39 * epochs].tolist() == pytest.approx([1e-6, 1e-6], rel=0, abs=1e-15)
    assert real[39 * epochs - 1].tolist() != pytest.approx([1e-6, 1e-6], rel=0, abs=1e-9)
    assert (ref[39 * epochs] > 1e-6 + 1e-8).all()
