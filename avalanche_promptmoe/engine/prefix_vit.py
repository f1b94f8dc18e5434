"""``PrefixViT``: a frozen timm ViT whose chosen blocks attend to per-sample prefix keys/values."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .backbone import backbone_dims, freeze, is_vision_transformer
from .prefix_attention import AttentionPath, Prefix, PrefixAttention, PrefixProvider, _ForwardContext

__all__ = ["PrefixViT"]

PrefixSpec = dict[int, "Prefix | tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor | None]"] | PrefixProvider


class PrefixViT(nn.Module):
    """A frozen timm ``VisionTransformer`` with :class:`PrefixAttention` in the blocks ``layers``.

    ``forward(x, prefix=None)`` returns exactly what the wrapped timm model returns (pooled features
    when it was built with ``num_classes=0``); it has no head of its own. The backbone is modified in
    place (its chosen ``blocks[i].attn`` are wrapped); :meth:`remove` restores it.

    Args:
        backbone: a timm ``VisionTransformer``; it is frozen (``requires_grad=False``, eval mode).
        layers: block indices that take a prefix (default: all blocks).
    """

    def __init__(self, backbone: nn.Module, layers: Iterable[int] | None = None) -> None:
        super().__init__()
        if not is_vision_transformer(backbone):
            raise ValueError(f"backbone: expected a timm VisionTransformer, got {type(backbone).__name__}")
        depth = len(backbone.blocks)
        layers = list(range(depth)) if layers is None else [int(i) for i in layers]
        if not layers:
            raise ValueError("layers: give at least one block index")
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layers: indices {bad} are out of range for a ViT with {depth} blocks")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers: duplicate indices in {layers}")
        self.backbone = freeze(backbone)
        self.layers: tuple[int, ...] = tuple(sorted(layers))
        dims = backbone_dims(backbone)
        self.depth, self.embed_dim = dims["depth"], dims["embed_dim"]
        self.num_heads, self.head_dim = dims["num_heads"], dims["head_dim"]
        self._wrappers: dict[int, PrefixAttention] = {}
        for i in self.layers:
            wrapper = PrefixAttention(backbone.blocks[i].attn, layer=i)
            backbone.blocks[i].attn = wrapper
            self._wrappers[i] = wrapper
        pe = backbone.patch_embed
        self.in_chans = int(pe.proj.in_channels)
        self.img_size = tuple(pe.img_size) if pe.img_size is not None else None
        self._strict_size = bool(getattr(pe, "strict_img_size", True)) and not getattr(
            backbone, "dynamic_img_size", False
        )

    def train(self, mode: bool = True) -> PrefixViT:
        """The backbone stays in eval mode (frozen: no dropout, no drop-path)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming ``x`` unless it is ``(B, in_chans, *img_size)``."""
        if x.dim() != 4:
            raise ValueError(f"x: expected images (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected {self.in_chans} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        if self._strict_size and self.img_size is not None and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"x: expected images of {self.img_size[0]}x{self.img_size[1]} px, got "
                f"{x.shape[-2]}x{x.shape[-1]}; resize in the benchmark's transforms"
            )

    @contextmanager
    def _context(self, prefix: PrefixSpec | None, path: AttentionPath) -> Iterator[_ForwardContext]:
        if path not in ("fused", "explicit"):
            raise ValueError(f"path: expected 'fused' or 'explicit', got {path!r}")
        if isinstance(prefix, dict):
            unknown = sorted(set(prefix) - set(self.layers))
            if unknown:
                raise ValueError(f"prefix: layers {unknown} are not prompted (prompted: {list(self.layers)})")
        elif prefix is not None and not callable(prefix):
            raise ValueError(f"prefix: expected a dict {{layer: (keys, values)}} or a provider, got {type(prefix).__name__}")
        ctx = _ForwardContext(prefix, path)
        for w in self._wrappers.values():
            w.context = ctx
        try:
            yield ctx
        finally:
            for w in self._wrappers.values():
                w.context = None

    def forward(self, x: Tensor, prefix: PrefixSpec | None = None, *, path: AttentionPath = "fused") -> Tensor:
        """Run the backbone with prefixes.

        Args:
            x: model-ready images ``(B, C, H, W)``.
            prefix: ``{layer: (keys, values[, bias])}`` with keys/values ``(B, H, P, Dh)``, or a provider
                ``provider(layer, x_attn, q) -> (keys, values, bias) | None`` called inside each prompted
                attention after its queries are computed. ``None``: the plain timm output.
            path: ``"fused"`` (one SDPA call over ``[prefix; tokens]``) or ``"explicit"``.
        """
        self.check_input(x)
        if prefix is None and path == "fused":
            return self.backbone(x)
        with self._context(prefix, path):
            return self.backbone(x)

    def forward_explicit(self, x: Tensor, prefix: PrefixSpec | None = None) -> tuple[Tensor, dict[int, Tensor]]:
        """Explicit path; also returns the prefix attention logits ``{layer: (B, H, N, P)}``."""
        self.check_input(x)
        with self._context(prefix, "explicit") as ctx:
            out = self.backbone(x)
        return out, ctx.prefix_logits

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Unprompted features (the query pass), without grad."""
        return self.forward(x)

    def remove(self) -> nn.Module:
        """Unwrap the attention layers and return the plain timm backbone."""
        for i, w in self._wrappers.items():
            self.backbone.blocks[i].attn = w.attn
        self._wrappers.clear()
        return self.backbone
