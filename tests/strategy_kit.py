"""Tiny keyword sets that build every strategy in seconds (shared by the #21 tests)."""

from __future__ import annotations

from avalanche_promptmoe import (
    HashPromptStrategy,
    HiDePromptStrategy,
    JointPromptStrategy,
    LayerGroupedPromptStrategy,
    LinearProbeStrategy,
    SequentialPromptStrategy,
    SMoPEStrategy,
)

_FAST_PHASES = dict(tap_epochs=1, samples_per_class=8, tap_centroids=2)
_HIDE = dict(layers=(0, 1), length=2, tii_epochs=1, tii_replay_epochs=1, n_centroids=2, **_FAST_PHASES)
TINY_KW = {
    "hash": (HashPromptStrategy, dict(num_experts=4, top_k=2, **_HIDE)),
    "smope": (SMoPEStrategy, dict(layers=(0, 1), num_experts=4, top_k=2, **_FAST_PHASES)),
    "hlgp": (LayerGroupedPromptStrategy, dict(layers=(0, 1), groups=((0,), (1,)), length=2, rank=2, **_FAST_PHASES)),
    "hide": (HiDePromptStrategy, dict(_HIDE)),
    "linear": (LinearProbeStrategy, {}),
    "seq": (SequentialPromptStrategy, dict(layers=(0, 1), length=2)),
    "joint": (JointPromptStrategy, dict(layers=(0,), length=2)),
}
COMMON_KW = dict(num_classes=6, train_mb_size=16, train_epochs=1, device="cpu", loggers=[], progress=False,
                 seed=0, lr=0.01)


def make_tiny_strategy(name: str, **overrides):
    """The strategy ``name`` (a METHODS key) on a tiny ViT, 6 classes, one epoch per phase."""
    from cl_utils import tiny_backbone

    cls, kw = TINY_KW[name]
    return cls(backbone=tiny_backbone(), **{**COMMON_KW, **kw, **overrides})
