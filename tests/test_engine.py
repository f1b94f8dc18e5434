"""PrefixAttention / PrefixViT: parity with timm, fused = explicit, errors on bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_vit
from hypothesis import given
from hypothesis import strategies as st

from avalanche_promptmoe.engine import BackboneError, PrefixViT, create_backbone, unwrap_attention


def _prefix(B, H, P, Dh, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, P, Dh, generator=g), torch.randn(B, H, P, Dh, generator=g)


@pytest.mark.parametrize("fused", [True, False])
def test_no_prefix_equals_timm(fused):
    """Invariant 5: no prefix ⇒ exactly the timm model's output, fused attention on and off."""
    ref_model = make_tiny_vit(seed=1)
    model = make_tiny_vit(seed=1)
    for m in (ref_model, model):
        for blk in m.blocks:
            blk.attn.fused_attn = fused
    x = torch.randn(4, 3, 32, 32)
    ref = ref_model(x)
    pv = PrefixViT(model, layers=[0, 1, 2])
    torch.testing.assert_close(pv(x), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(pv(x, path="explicit"), ref, atol=1e-5, rtol=0)
    # guard against a vacuous test: a prefix does change the output
    pk, pvv = _prefix(4, pv.num_heads, 3, pv.head_dim)
    assert (pv(x, {0: (pk, pvv)}) - ref).abs().max() > 1e-3


@given(
    batch=st.integers(1, 3),
    plen=st.integers(1, 6),
    layers=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
    with_bias=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fused_equals_explicit(batch, plen, layers, with_bias, seed):
    """Invariant 6: the fused SDPA path equals the explicit path (fp32, atol 1e-5)."""
    pv = PrefixViT(make_tiny_vit(), layers=[0, 1, 2])
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    prefix = {}
    for i, layer in enumerate(layers):
        pk, pvv = _prefix(batch, pv.num_heads, plen, pv.head_dim, seed + i)
        bias = torch.randn(batch, pv.num_heads, 1, plen) if with_bias else None
        prefix[layer] = (pk, pvv, bias)
    fused = pv(x, prefix)
    explicit, logits = pv.forward_explicit(x, prefix)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    assert set(logits) == set(layers)
    for layer in layers:
        assert logits[layer].shape == (batch, pv.num_heads, 17, plen)


def test_explicit_logits_are_scaled_dot_products():
    pv = PrefixViT(make_tiny_vit(), layers=[0])
    x = torch.randn(2, 3, 32, 32)
    pk, pvv = _prefix(2, pv.num_heads, 4, pv.head_dim)
    captured = {}

    def provider(layer, x_attn, q):
        captured["q"] = q
        return pk, pvv, None

    _, logits = pv.forward_explicit(x, provider)
    expected = captured["q"] @ pk.transpose(-2, -1) * pv.head_dim**-0.5
    torch.testing.assert_close(logits[0], expected)


def test_bf16_fused_close_to_explicit():
    """Invariant 6 in bf16 (autocast on CPU): within 3e-2 of the explicit path."""
    pv = PrefixViT(make_tiny_vit(), layers=[0, 1])
    x = torch.randn(2, 3, 32, 32)
    prefix = {0: _prefix(2, pv.num_heads, 4, pv.head_dim)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = pv(x, prefix).float()
        explicit, _ = pv.forward_explicit(x, prefix)
    assert (fused - explicit.float()).abs().max() < 3e-2


def test_provider_sees_attention_input_and_queries():
    pv = PrefixViT(make_tiny_vit(), layers=[1, 2])
    seen = []

    def provider(layer, x_attn, q):
        seen.append((layer, tuple(x_attn.shape), tuple(q.shape)))
        return None  # no prefix from this provider: output must equal timm's

    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(pv(x, provider), pv(x), atol=1e-6, rtol=0)
    assert seen == [(1, (2, 17, 64), (2, 2, 17, 32)), (2, (2, 17, 64), (2, 2, 17, 32))]


def test_prefix_broadcasts_over_batch():
    pv = PrefixViT(make_tiny_vit(), layers=[0])
    x = torch.randn(3, 3, 32, 32)
    pk, pvv = _prefix(1, pv.num_heads, 2, pv.head_dim)
    torch.testing.assert_close(pv(x, {0: (pk, pvv)}), pv(x, {0: (pk.expand(3, -1, -1, -1), pvv.expand(3, -1, -1, -1))}))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3),
        dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4),
        dict(img_size=224, patch_size=16, embed_dim=32, depth=1, num_heads=2),
    ],
)
def test_any_vit_size(kwargs):
    model = make_tiny_vit(**kwargs)
    x = torch.randn(2, 3, kwargs["img_size"], kwargs["img_size"])
    ref = model(x)
    pv = PrefixViT(model)
    torch.testing.assert_close(pv(x), ref)
    pk, pvv = _prefix(2, pv.num_heads, 5, pv.head_dim)
    assert pv(x, {0: (pk, pvv)}).shape == ref.shape


def test_remove_restores_plain_attention():
    model = make_tiny_vit()
    pv = PrefixViT(model, layers=[0])
    assert type(model.blocks[0].attn).__name__ == "PrefixAttention"
    pv.remove()
    assert type(model.blocks[0].attn).__name__ == "Attention"
    assert unwrap_attention(model.blocks[0].attn) is model.blocks[0].attn


def test_wrapping_twice_is_refused():
    model = make_tiny_vit()
    PrefixViT(model, layers=[0])
    with pytest.raises(TypeError, match="already wrapped"):
        PrefixViT(model, layers=[0])


# --- bad input: clear ValueErrors naming the argument ---------------------------------------


def test_bad_image_size_and_channels():
    pv = PrefixViT(make_tiny_vit(), layers=[0])
    with pytest.raises(ValueError, match=r"^x: expected images of 32x32"):
        pv(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"^x: expected 3 channels"):
        pv(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"^x: expected images \(B, C, H, W\)"):
        pv(torch.randn(3, 32, 32))


def test_bad_prefix_heads_and_head_dim():
    pv = PrefixViT(make_tiny_vit(), layers=[0])
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"^prefix: .*heads=3.*needs heads=2"):
        pv(x, {0: _prefix(2, 3, 4, pv.head_dim)})
    with pytest.raises(ValueError, match=r"^prefix: .*head_dim=16.*head_dim=32"):
        pv(x, {0: _prefix(2, pv.num_heads, 4, 16)})
    with pytest.raises(ValueError, match=r"^prefix: .*batch 3"):
        pv(x, {0: _prefix(3, pv.num_heads, 4, pv.head_dim)})
    with pytest.raises(ValueError, match=r"^prefix: layers \[2\] are not prompted"):
        pv(x, {2: _prefix(2, pv.num_heads, 4, pv.head_dim)})


def test_bad_layers():
    with pytest.raises(ValueError, match=r"^layers: indices \[3\] are out of range"):
        PrefixViT(make_tiny_vit(), layers=[0, 3])
    with pytest.raises(ValueError, match=r"^layers: indices \[-1\]"):
        PrefixViT(make_tiny_vit(), layers=[-1])


def test_not_a_vit():
    with pytest.raises(ValueError, match=r"^backbone: expected a timm VisionTransformer"):
        PrefixViT(torch.nn.Linear(3, 3))
    with pytest.raises(BackboneError, match=r"^backbone: expected a timm VisionTransformer"):
        create_backbone(torch.nn.Linear(3, 3))
    with pytest.raises(BackboneError, match="not a timm VisionTransformer"):
        create_backbone("resnet18")


# --- create_backbone ------------------------------------------------------------------------


def test_create_backbone_from_name_is_frozen():
    m = create_backbone("test_vit", img_size=32, patch_size=8)
    assert not any(p.requires_grad for p in m.parameters())
    assert not m.training
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, m.num_features)


def test_create_backbone_from_local_file_drops_mismatched_head(tmp_path):
    src = make_tiny_vit(seed=3, num_classes=7)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2)
    m = create_backbone("vit_tiny_patch16_224", checkpoint_path=path, **kwargs)
    src.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), src(x))


def test_create_backbone_missing_file_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(BackboneError, match=r"^checkpoint_path: weight file .* does not exist"):
        create_backbone("vit_tiny_patch16_224", checkpoint_path=tmp_path / "missing.pth")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"checkpoint_path=<local weight file>"):
        create_backbone("vit_base_patch16_224.orig_in21k", pretrained=True)


def test_create_backbone_refuses_kwargs_with_built_model():
    with pytest.raises(BackboneError, match="only with a timm model name"):
        create_backbone(make_tiny_vit(), checkpoint_path="x.pth")
