"""L2P, DualPrompt and CODA-Prompt against the official CODA-Prompt code's recorded outputs.

``../shared/data/conformance/coda_official.pt`` (described in ``coda_official.md`` beside it) holds
the official ``models/zoo.py`` modules' outputs on a tiny random ViT: queries, similarities,
selections, CODA-P's weights, injected prefixes, every block's output, features, logits, the
pull / orthogonality losses, the official learner's total loss and masked logits and every
gradient, at tasks 0 and 1, in training and evaluation, and CODA-P's Gram–Schmidt calls with their
random draws. Each case maps the recorded weights into our strategy's model (``recipe="official"``)
and checks every recorded quantity: 1e-5 absolute; L2P's large summed losses rtol 1e-6; selected
indices and the −inf pattern of the masked logits exactly. A missing golden file is a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch.testing import assert_close

from avalanche_promptmoe import CODAPromptStrategy, DualPromptStrategy, L2PStrategy
from avalanche_promptmoe.engine import MASK_VALUE
from avalanche_promptmoe.methods.codaprompt.model import gram_schmidt_rows

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "data" / "conformance" / "coda_official.pt"
ATOL = 1e-5
METHODS = {  # golden key → (strategy, keywords of the official run)
    "l2p": (L2PStrategy, dict(layers=(0,))),
    "l2p_deep": (L2PStrategy, dict(layers=(0, 1, 2, 3, 4))),
    "dual": (DualPromptStrategy, {}),
    "coda": (CODAPromptStrategy, dict(components_per_task=10)),
}


@pytest.fixture(scope="module")
def golden() -> dict:
    assert GOLDEN.exists(), f"golden file missing: {GOLDEN} (see ../shared/data/conformance/README.md)"
    return torch.load(GOLDEN, weights_only=False)


def get(g: dict, path: str):
    """``g['a']['b'][0]...`` from ``'a/b/0'`` (integer keys for layers, ``[i]`` for list items)."""
    x = g
    for part in path.split("/"):
        if isinstance(x, list):
            x = x[int(part.strip("[]"))]
        elif part.isdigit() and int(part) in x:
            x = x[int(part)]
        else:
            x = x[part]
    return x


def official_backbone(g: dict) -> torch.nn.Module:
    c = g["cfg"]
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=c["img"], patch_size=c["patch"], embed_dim=c["dim"],
        depth=c["depth"], num_heads=c["heads"], num_classes=0,
    )
    vit.load_state_dict(g["backbone"], strict=True)
    return vit.eval()


def close(actual, expected, what: str, *, rtol: float = 0.0, atol: float = ATOL) -> None:
    assert_close(actual.detach().float(), expected.float().reshape(actual.shape), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------- mapping the official weights
def param_map(method: str, model) -> dict[str, tuple[torch.Tensor, slice]]:
    """Official parameter name → (our tensor, row slice of the official tensor it holds)."""
    out = {}
    if method.startswith("l2p"):
        for pos, layer in enumerate(model.layers):
            out[f"e_p_{layer}"] = (model.prompts, pos)
            out[f"e_k_{layer}"] = (model.keys, pos)
    elif method == "dual":
        for pos, layer in enumerate(model.g_layers):
            out[f"g_p_{layer}"] = (model.g_prompts, pos)
        for pos, layer in enumerate(model.e_layers):
            out[f"e_p_{layer}"] = (model.e_prompts, pos)
            out[f"e_k_{layer}"] = (model.e_keys, pos)
    return out


def coda_chunks(model):
    return {"e_p": model.comp_prompts, "e_k": model.comp_keys, "e_a": model.comp_attn}


def load_state(method: str, strategy, state: dict[str, torch.Tensor]) -> None:
    model = strategy.model
    with torch.no_grad():
        if method == "coda":
            c = model.components_per_task
            for name, chunks in coda_chunks(model).items():
                for t, chunk in enumerate(chunks):
                    for pos, layer in enumerate(model.layers):
                        chunk[pos].copy_(state[f"{name}_{layer}"][t * c:(t + 1) * c])
        else:
            for name, (param, pos) in param_map(method, model).items():
                param[pos].copy_(state[name])


def our_grads(method: str, strategy, golden_grads: dict) -> dict[str, torch.Tensor]:
    """Our gradients in the official layout (zeros where ``.grad`` is None, rows ≥ f zero)."""
    model = strategy.model
    out = {}
    if method == "coda":
        for name, chunks in coda_chunks(model).items():
            for pos, layer in enumerate(model.layers):
                rows = [ch.grad[pos] if ch.grad is not None else torch.zeros_like(ch[pos]) for ch in chunks]
                full = torch.zeros_like(golden_grads[f"{name}_{layer}"])
                full[: sum(r.shape[0] for r in rows)] = torch.cat(rows)
                out[f"{name}_{layer}"] = full
    else:
        for name, (param, pos) in param_map(method, model).items():
            out[name] = param.grad[pos] if param.grad is not None else torch.zeros_like(param[pos])
    return out


def build(method: str, g: dict, task: int, **overrides):
    cls, kw = METHODS[method]
    s = cls(backbone=official_backbone(g), num_classes=g["cfg"]["classes"], device="cpu", progress=False,
            loggers=[], train_mb_size=4, **{"recipe": "official", **kw, **overrides})
    per_task = g["cfg"]["classes_per_task"]
    s.task_classes = [list(range(t * per_task, (t + 1) * per_task)) for t in range(task + 1)]
    s.class_to_task = {c: t for t, cs in enumerate(s.task_classes) for c in cs}
    s.trained_experiences = task
    if method == "coda":
        for t in range(task + 1):
            s.prepare_task(t)
    with torch.no_grad():
        s.model.head.weight.copy_(g["head"]["weight"])
        s.model.head.bias.copy_(g["head"]["bias"])
    load_state(method, s, get(g, f"{method}/t{task}/state"))
    return s


def run_forward(strategy, g: dict, task: int, train: bool):
    """One forward as the strategy does it, with the block outputs recorded."""
    blocks = []
    hooks = [b.register_forward_hook(lambda m, i, o: blocks.append(o)) for b in strategy.model.vit.backbone.blocks]
    strategy.model.train(train)
    strategy.is_training = train
    strategy.mbatch = [g["X"], get(g, f"Y/{task}"), torch.zeros(4, dtype=torch.long)]
    try:
        strategy.mb_output = strategy.forward()
    finally:
        for h in hooks:
            h.remove()
    return blocks[-len(strategy.model.vit.backbone.blocks):]


# ---------------------------------------------------------------- forward records
CASES = [(m, t, mode) for m in METHODS for t in (0, 1) for mode in ("train", "eval")]


@pytest.mark.parametrize(("method", "task", "mode"), CASES, ids=[f"{m}-t{t}-{mode}" for m, t, mode in CASES])
def test_forward_matches_official(golden, method, task, mode):
    rec = get(golden, f"{method}/t{task}/{mode}")
    s = build(method, golden, task)
    model = s.model
    blocks = run_forward(s, golden, task, mode == "train")
    close(model.plain_features(golden["X"]), rec["query"], "query")
    loss_tol = dict(rtol=1e-6, atol=1e-4) if method.startswith("l2p") else {}
    for layer, lr in rec["layers"].items():
        ek, ev = model.last_prefix[layer]
        close(ek, lr["Ek"], f"layer {layer} Ek")
        close(ev, lr["Ev"], f"layer {layer} Ev")
        if "cos_sim" in lr:
            close(model.last_routing[layer].scores, lr["cos_sim"], f"layer {layer} cos_sim")
        if "topk_indices" in lr:
            assert torch.equal(model.last_routing[layer].indices, lr["topk_indices"]), f"layer {layer} selection"
            picked = model.last_routing[layer].scores.gather(1, lr["topk_indices"])
            close(picked, lr["topk_values"], f"layer {layer} topk_values")
        if method == "dual" and mode == "train" and layer in model.e_layers:
            assert bool((model.last_routing[layer].indices == task).all()), "training uses the task id"
        if "alpha" in lr:
            close(model.last_alpha[layer], lr["alpha"], f"layer {layer} alpha")
            close(model.last_a_query[layer], lr["a_querry"], f"layer {layer} a_querry")
            close(torch.cat([ek, ev], dim=1), lr["P"], f"layer {layer} P")
        ours = model.last_layer_losses.get(layer, torch.zeros(()))
        close(ours, lr["loss"], f"layer {layer} loss", **loss_tol)
    close(torch.stack(blocks), rec["blocks"], "blocks")
    close(model.last_features, rec["features"], "features")
    close(s.mb_logits, rec["logits"], "logits")
    if mode == "train":
        aux = model.last_aux_loss if model.last_aux_loss is not None else torch.zeros(())
        close(aux.reshape(1), rec["prompt_loss"], "prompt_loss", **loss_tol)
    else:
        assert model.last_aux_loss is None


# ---------------------------------------------------------------- the learner step
STEPS = [(m, t, v) for m in METHODS for t in (0, 1) for v in ("step",)] + [("coda", t, "step_ortho0.1") for t in (0, 1)]


@pytest.mark.parametrize(("method", "task", "variant"), STEPS, ids=[f"{m}-t{t}-{v}" for m, t, v in STEPS])
def test_step_matches_official(golden, method, task, variant):
    rec = get(golden, f"{method}/t{task}/{variant}")
    s = build(method, golden, task, **({"ortho_mu": 0.1} if variant == "step_ortho0.1" else {}))
    run_forward(s, golden, task, train=True)
    loss = s.criterion()
    loss.backward()
    loss_tol = dict(rtol=1e-6, atol=1e-4) if method.startswith("l2p") else {}
    close(loss, rec["total_loss"], "total_loss", **loss_tol)
    aux = s.model.last_aux_loss if s.model.last_aux_loss is not None else torch.zeros(())
    close(aux, rec["aux_loss"], "aux_loss", **loss_tol)
    for layer, value in rec["layer_losses"].items():
        close(s.model.last_layer_losses.get(layer, torch.zeros(())), value, f"layer {layer} loss", **loss_tol)
    # masked logits: the official cut to valid_out_dim with past classes at −inf; ours masks with −1e4
    official = rec["logits_masked"]
    valid, last = rec["valid_out_dim"], rec["last_valid_out_dim"]
    ours = s.mb_output.detach()
    assert bool((ours[:, valid:] == MASK_VALUE).all()) and bool((ours[:, :last] == MASK_VALUE).all())
    assert torch.equal(torch.isinf(official), torch.arange(valid).expand(4, -1) < last)
    close(ours[:, last:valid], official[:, last:], "logits_masked")
    close(s.mb_logits[:, last:valid], official[:, last:], "logits_masked (unmasked logits)")
    for name, grad in our_grads(method, s, rec["grads"]).items():
        assert not rec["grad_is_none"][name]
        close(grad, rec["grads"][name], f"grad {name}")
    close(s.model.head.weight.grad, rec["grad_head"]["weight"], "grad head.weight")
    close(s.model.head.bias.grad, rec["grad_head"]["bias"], "grad head.bias")


# ---------------------------------------------------------------- CODA-P's components
def _replay(calls: list, order: list[str]):
    """A ``draw(kind, layer, shape)`` returning the official draws of the call ``layer{l}:{kind}``."""
    def draw(kind: str, layer: int, shape: tuple[int, ...]) -> torch.Tensor:
        d = calls[order.index(f"layer{layer}:{kind}")]["draws"]
        assert tuple(d.shape) == shape
        return d
    return draw


@pytest.mark.parametrize("when", ["gs_init", "switch/gs"])
def test_coda_gram_schmidt_equals_each_official_call(golden, when):
    """Our classical Gram–Schmidt fed the official call's input and draws gives its output."""
    calls = get(golden, f"coda/{when}")
    c = 10
    s = 0 if when == "gs_init" else c
    for i, call in enumerate(calls):
        inp, out = call["in"].flatten(1), call["out"].flatten(1)
        new = gram_schmidt_rows(inp[:s], call["draws"])
        close(new, out[s:s + c], f"{when}[{i}] new rows")
        assert torch.equal(out[:s], inp[:s]), "old rows are copied, not re-orthonormalised"
        assert not bool(out[s + c:].any()), "rows past the current task stay zero"


def test_coda_task_switch_replayed_from_the_recorded_draws(golden):
    """Construction and the task switch through the model: the official init's rows [0, 10), then
    the switch on the trained task-0 state gives the official ``switch/state`` (old rows unchanged
    and frozen, new rows from the recorded draws)."""
    s = build("coda", golden, 0)
    model = s.model
    fresh = type(model)(official_backbone(golden), 10, components_per_task=10)
    fresh.add_task(draw=_replay(get(golden, "coda/gs_init"), get(golden, "coda/gs_init_order")))
    for name, chunks in coda_chunks(fresh).items():
        for pos, layer in enumerate(fresh.layers):
            close(chunks[0][pos], get(golden, f"coda/prompt_init/{name}_{layer}")[:10], f"init {name}_{layer}")
    model.add_task(draw=_replay(get(golden, "coda/switch/gs"), get(golden, "coda/switch/gs_order")))
    assert model.num_tasks == 2
    for name, chunks in coda_chunks(model).items():
        assert not chunks[0].requires_grad and chunks[1].requires_grad
        for pos, layer in enumerate(model.layers):
            after = get(golden, f"coda/switch/state/{name}_{layer}")
            assert torch.equal(chunks[0][pos], get(golden, f"coda/t0/state/{name}_{layer}")[:10])
            assert torch.equal(chunks[0][pos], after[:10])
            close(chunks[1][pos], after[10:], f"switch {name}_{layer}")


def test_coda_refuses_more_components_than_the_width(golden):
    with pytest.raises(ValueError, match="cannot be orthogonalised"):
        gram_schmidt_rows(torch.randn(60, 64), torch.randn(10, 64))


# ---------------------------------------------------------------- the two recipes of the pull term
@pytest.mark.parametrize("task", [0, 1])
def test_l2p_pull_term_official_and_ours(golden, task):
    """``recipe="official"``: the batch-summed cross term (B·B·k terms, batch-dependent, equal to the
    golden on the batch and on ``X[:2]``); ``"ours"``: the per-sample term averaged over the batch
    (the golden's per-sample sum / B), which does not change when the batch is split."""
    diag = golden["diagnostics"]
    per_sample_sum = torch.tensor(diag[f"l2p/t{task}/pull_per_sample_gather_sum"])
    official = build("l2p", golden, task)
    ours = build("l2p", golden, task, recipe="ours")
    X = golden["X"]
    for s in (official, ours):
        s.model.train()
    official.model(X)
    close(official.model.last_aux_loss.reshape(1), get(golden, f"l2p/t{task}/train/prompt_loss"), "official",
          rtol=1e-6, atol=1e-4)
    official.model(X[:2])
    close(official.model.last_aux_loss.reshape(1), get(golden, f"l2p/t{task}/prompt_loss_first2"), "official X[:2]",
          rtol=1e-6, atol=1e-4)
    ours.model(X)
    whole = ours.model.last_aux_loss
    close(whole, per_sample_sum / 4, "ours", rtol=1e-6, atol=1e-5)
    halves = []
    for part in (X[:2], X[2:]):
        ours.model(part)
        halves.append(ours.model.last_aux_loss)
    close(whole, (halves[0] + halves[1]) / 2, "ours is a per-sample mean")
    assert float(get(golden, f"l2p/t{task}/train/prompt_loss")) > 3 * float(whole.detach()) * 4


@pytest.mark.parametrize("task", [0, 1])
def test_dualprompt_pull_term_official_and_ours(golden, task):
    official, ours = build("dual", golden, task), build("dual", golden, task, recipe="ours")
    for s in (official, ours):
        run_forward(s, golden, task, train=True)
    close(ours.model.last_aux_loss * 4, official.model.last_aux_loss, "ours = official / B")
    close(official.model.last_aux_loss.reshape(1), get(golden, f"dual/t{task}/train/prompt_loss"), "official")
