"""Issue 14 item 7: every snippet of the README's "Use it with your own Avalanche pipeline" section
runs, on tiny data.

Harness: the section's ```python blocks are executed in order in one namespace, in a temporary
working directory. ``benchmark`` is a small synthetic class-incremental stream (2 experiences × 3
classes, 32 px), and after each block ``common`` (the first block's settings) is replaced by tiny
settings: a fresh 4-block ViT of width 64, 6 classes, batch 8, one epoch, CPU, fast HiDe phases.
Nothing else in the snippets is changed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from cl_utils import FAST_HIDE, make_benchmark
from conftest import make_tiny_vit

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use it with your own Avalanche pipeline"


def section_blocks(section: str = SECTION) -> list[str]:
    text = README.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def tiny_common() -> dict:
    return dict(backbone=make_tiny_vit(depth=4), num_classes=6, train_mb_size=8, train_epochs=1, device="cpu",
                progress=False, num_experts=4, top_k=2, **FAST_HIDE)


def test_readme_section_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = section_blocks()
    assert len(blocks) == 6, "the section's snippets changed: update this test's checks"
    ns: dict = {"benchmark": make_benchmark(n_exp=2, classes_per_exp=3, per_class=6, test_per_class=4)}
    results = []
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md[{SECTION[3:]} block {i}]", "exec"), ns)
        results.append({k: ns[k] for k in ("strategy", "replay", "evaluator", "model") if k in ns})
        ns["common"] = tiny_common()

    # replay: a filled buffer, saved with the checkpoint
    assert len(results[1]["replay"].storage_policy.buffer) > 0
    assert (tmp_path / "hash_replay.pt").exists()
    # own optimizer / scheduler / criterion
    opt = results[2]["strategy"].optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert results[2]["strategy"]._scheduler.__class__.__name__ == "StepLR"
    # stock metrics: finite eval losses, CSV written
    metrics = results[3]["evaluator"].get_all_metrics()
    losses = [v for k, (_, vals) in metrics.items() if k.startswith("Loss_Exp/eval") for v in vals]
    assert losses and all(math.isfinite(v) and v < 100 for v in losses)
    assert any((tmp_path / "csv_logs").rglob("*.csv"))
    # MLflow: a local store under ./mlruns
    assert (tmp_path / "mlruns").exists()
    # our plugin on Naive: the experts' gradients are identical (a linear average), so with HGM every
    # SGD step moves the frequent experts alpha = 0.1 times as far as the others
    moved = ns["moved"][0]
    assert moved[2] > 0 and torch.allclose(moved[2], moved[3], rtol=1e-4)
    assert torch.allclose(moved[:2], 0.1 * moved[2:], rtol=1e-3)


def test_readme_use_a_trained_model(tmp_path, monkeypatch):
    """The "Use a trained model" snippet: ``common`` names a timm ViT with a local weight file (so
    that ``from_checkpoint`` rebuilds the backbone from the checkpoint alone)."""
    monkeypatch.chdir(tmp_path)
    (block,) = section_blocks("## Use a trained model")
    vit_kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2)
    torch.save(make_tiny_vit(**vit_kwargs).state_dict(), tmp_path / "tiny_vit.pth")
    common = dict(backbone="vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "tiny_vit.pth"),
                  backbone_kwargs=vit_kwargs, num_classes=6, train_mb_size=8, train_epochs=1, device="cpu",
                  progress=False, loggers=[], num_experts=4, top_k=2, **FAST_HIDE)
    ns: dict = {"benchmark": make_benchmark(n_exp=2, classes_per_exp=3, per_class=6, test_per_class=4),
                "common": common}
    exec(compile(block, "README.md[Use a trained model]", "exec"), ns)
    images, classes, logits = ns["images"], ns["classes"], ns["logits"]
    assert classes.dtype == torch.int64 and classes.shape == (len(images),)
    assert torch.equal(classes, ns["strategy"].predict(images))  # the rebuilt strategy predicts as the trained
    assert torch.equal(logits, ns["strategy"].predict_logits(images))
    assert set(classes.tolist()) <= set(range(6)) and (logits > -1e4).all()  # both experiences trained
    first = len(ns["benchmark"].test_stream[0].dataset)
    assert ns["per_image"].shape == (first,)  # the whole first experience, in order
    assert torch.equal(ns["per_image"][: len(images)], classes[:first])


ZOO_SECTION = "## L2P, DualPrompt and CODA-Prompt (and Avalanche's own L2P)"


def test_readme_zoo_section_swaps_avalanches_l2p_for_ours(tmp_path, monkeypatch, capsys):
    """The README's L2P section: its pipeline runs with our ``L2PStrategy`` in place of Avalanche's
    ``LearningToPrompt``, and what the section says of Avalanche's own class still holds."""
    from avalanche.training import LearningToPrompt

    from avalanche_promptmoe import L2PStrategy

    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    start = text.index(ZOO_SECTION)
    blocks = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + len(ZOO_SECTION))], re.S)
    assert len(blocks) == 2, "the section's snippets changed: update this test"
    ns: dict = {"benchmark": make_benchmark(n_exp=2, classes_per_exp=3, per_class=6, test_per_class=4)}
    exec(compile(blocks[0], "README.md[zoo block 0]", "exec"), ns)
    assert ns["zoo"]["num_classes"] == 100 and ns["zoo"]["pretrained"] is True
    ns["zoo"] = dict(backbone=make_tiny_vit(depth=2), num_classes=6, train_mb_size=8, train_epochs=1,
                     device="cpu", progress=False)
    exec(compile(blocks[1], "README.md[zoo block 1]", "exec"), ns)
    strategy = ns["strategy"]
    assert isinstance(strategy, L2PStrategy) and strategy.trained_experiences == 2
    metrics = ns["evaluator"].get_all_metrics()
    assert any(k.startswith("Top1_Acc_Stream/eval_phase/test_stream") for k in metrics)
    assert int(strategy.expert_usage().sum()) == 2 * 18 * 5  # 2 experiences × 18 images × top-5
    assert "tensor([180])" in capsys.readouterr().out
    with pytest.raises(TypeError, match="'PretrainedCfg' object is not subscriptable"):
        LearningToPrompt(model_name="vit_tiny_patch16_224", criterion=torch.nn.CrossEntropyLoss(),
                         pretrained=False, num_classes=4, device="cpu")
