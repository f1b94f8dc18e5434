"""Shared fixtures. HF_HUB_OFFLINE must be set before anything imports timm (DECISIONS.md §E4)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_FUSED_ATTN", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to a loaded machine


def make_tiny_vit(seed: int = 0, **kwargs):
    """A real timm VisionTransformer, tiny: 32 px, patch 8 (16 tokens + CLS), 2 heads of 32."""
    import timm

    torch.manual_seed(seed)
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, num_classes=0)
    cfg.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **cfg).eval()


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
