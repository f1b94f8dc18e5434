"""Issue #13 item 1: backbone weights load strictly — every backbone tensor from the file, the
file's depth / width / patch equal to the model's, a clear BackboneError otherwise (local files,
JAX .npz through timm's converter, and timm's own pretrained=True hub route)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import timm
import torch
from conftest import make_tiny_vit

from avalanche_promptmoe.engine import BackboneError, create_backbone

NAME = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2)


@pytest.fixture(scope="module")
def tiny_state():
    return make_tiny_vit(seed=3).state_dict()


def _save(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_a_matching_file_loads_every_tensor(tmp_path, tiny_state):
    m = create_backbone(NAME, checkpoint_path=_save(tmp_path, "ok.pth", tiny_state), **TINY)
    got = m.state_dict()
    assert got.keys() == tiny_state.keys()
    assert all(torch.equal(got[k], tiny_state[k]) for k in got)


@pytest.mark.parametrize("kind", ["resnet", "prefixed", "empty"])
def test_a_file_for_another_model_is_refused_with_the_keys(tmp_path, tiny_state, kind):
    state = {
        "resnet": lambda: timm.create_model("resnet18", num_classes=0).state_dict(),
        "prefixed": lambda: {f"backbone.{k}": v for k, v in tiny_state.items()},
        "empty": dict,
    }[kind]()
    path = _save(tmp_path, f"{kind}.pth", state)
    with pytest.raises(BackboneError, match=rf"{path.name} does not fit .*0 of 42 backbone tensors loaded; missing 42") as err:
        create_backbone(NAME, checkpoint_path=path, **TINY)
    if kind == "prefixed":
        assert "prefix 'backbone.'" in str(err.value) and "unexpected 42" in str(err.value)
    if kind == "resnet":
        assert "unexpected 1" in str(err.value) and "bn1.weight" in str(err.value)


@pytest.mark.parametrize("model_kwargs, message", [
    (dict(depth=2), r"depth: file 3, model 2.*depth=3"),  # a forgotten backbone_kwargs: fewer blocks
    (dict(depth=5), r"depth: file 3, model 5"),  # or more blocks (the rest would stay random)
    (dict(embed_dim=128, num_heads=2), r"embed_dim: file 64, model 128"),
    (dict(patch_size=4), r"patch_size: file \(8, 8\), model \(4, 4\)"),
])
def test_architecture_implied_by_the_file_is_checked(tmp_path, tiny_state, model_kwargs, message):
    path = _save(tmp_path, "ok.pth", tiny_state)
    with pytest.raises(BackboneError, match=message):
        create_backbone(NAME, checkpoint_path=path, **{**TINY, **model_kwargs})


def test_a_head_in_the_file_is_ignored(tmp_path, tiny_state):
    state = {**tiny_state, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    m = create_backbone(NAME, checkpoint_path=_save(tmp_path, "with_head.pth", state), **TINY)
    assert torch.equal(m.cls_token, tiny_state["cls_token"])


def test_garbage_bytes_are_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00\x01 not a checkpoint " * 64)
    with pytest.raises(BackboneError, match=r"garbage\.pth is not a PyTorch checkpoint"):
        create_backbone(NAME, checkpoint_path=path, **TINY)


def _to_jax_npz(model, path):
    """Write a timm ViT as an original-JAX-layout .npz (the inverse of timm's ``_load_weights``)."""
    w, sd = {}, {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D, H = model.embed_dim, model.blocks[0].attn.num_heads
    w["embedding/kernel"] = sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
    w["embedding/bias"] = sd["patch_embed.proj.bias"]
    w["cls"] = sd["cls_token"]
    w["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"] = sd["norm.weight"], sd["norm.bias"]
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = np.split(sd[b + "attn.qkv.weight"], 3), np.split(sd[b + "attn.qkv.bias"], 3)
        for n, ww, bb in zip(("query", "key", "value"), qkv_w, qkv_b):
            w[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = ww.T.reshape(D, H, D // H)
            w[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = bb.reshape(H, D // H)
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = (
            sd[b + "attn.proj.weight"].reshape(D, H, D // H).transpose(1, 2, 0))
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **w)
    return path


def test_jax_npz_goes_through_timms_converter_and_is_checked(tmp_path):
    source = make_tiny_vit(seed=5)
    path = _to_jax_npz(source, tmp_path / "vit.npz")
    m = create_backbone(NAME, checkpoint_path=path, **TINY)  # no false alarm
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), source(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(BackboneError, match=r"vit\.npz holds a ViT of another shape .*depth: file 3, model 2"):
        create_backbone(NAME, checkpoint_path=path, **{**TINY, "depth": 2})  # timm would load 2 of 3 blocks
    with pytest.raises(BackboneError, match="depth: file 3, model 4"):
        create_backbone(NAME, checkpoint_path=path, **{**TINY, "depth": 4})


def test_the_kits_reference_vit_still_loads():
    from avalanche_promptmoe.kit import default_kit_dir, load_reference_backbone

    m = load_reference_backbone(default_kit_dir())
    state = torch.load(default_kit_dir() / "reference_vit.pth", weights_only=True)
    assert torch.equal(m.blocks[7].mlp.fc2.weight, state["blocks.7.mlp.fc2.weight"].float())


def test_timms_own_pretrained_route_is_checked(tmp_path, monkeypatch):
    """pretrained=True reads timm's hub weights (here from a local Hugging Face cache) and checks them."""
    import huggingface_hub.constants as hf_constants
    from safetensors.torch import save_file

    repo = tmp_path / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = make_tiny_vit(seed=7).state_dict()
    save_file(source, str(snapshot / "model.safetensors"))
    hub_name = "vit_tiny_patch16_224.augreg_in21k"
    m = create_backbone(hub_name, pretrained=True, **TINY)
    assert torch.equal(m.pos_embed, source["pos_embed"])
    with pytest.raises(BackboneError, match=r"^pretrained .*depth: file 3, model 2"):
        create_backbone(hub_name, pretrained=True, **{**TINY, "depth": 2})
    shutil.rmtree(snapshot)
    snapshot.mkdir()
    save_file({f"backbone.{k}": v for k, v in source.items()}, str(snapshot / "model.safetensors"))
    with pytest.raises(BackboneError, match=r"^pretrained .*0 of 42 backbone tensors loaded"):
        create_backbone(hub_name, pretrained=True, **TINY)
