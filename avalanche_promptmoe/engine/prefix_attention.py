"""``PrefixAttention``: a timm ``Attention`` that also attends to per-sample prefix keys/values.

It wraps (never copies) an unmodified timm 1.x ``Attention``: the projections, norms, dropout and
output projection are the wrapped module's own. With no prefix it calls the wrapped module, so the
output is exactly timm's. With a prefix, each query attends to ``[prefix; tokens]``:

    head_h(q_i) = softmax( [q_i K_p^T * s + bias ; q_i K_x^T * s] ) [V_p ; V_x],   s = 1/sqrt(Dh)

Prefix keys/values live in per-head key/value space (they are not projected by ``W_K``/``W_V``, as in
the official HiDe/SMoPE code). Shapes: B batch, H heads, N tokens, P prefix length, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionPath", "Prefix", "PrefixAttention", "PrefixProvider", "unwrap_attention"]


class Prefix(NamedTuple):
    """Per-sample prefix for one layer.

    keys, values: ``(B, H, P, Dh)`` (a leading 1 broadcasts over the batch).
    bias: optional additive logit on the prefix columns, broadcastable to ``(B, H, N, P)``.
    """

    keys: Tensor
    values: Tensor
    bias: Tensor | None = None


#: ``provider(layer, x_attn, q) -> Prefix | (keys, values, bias) | None``; ``x_attn`` is the attention
#: input ``(B, N, C)`` (after the block's norm), ``q`` the queries ``(B, H, N, Dh)`` after ``q_norm``.
PrefixProvider = Callable[[int, Tensor, Tensor], "Prefix | tuple | None"]
AttentionPath = str  # "fused" | "explicit"


def unwrap_attention(module: nn.Module) -> nn.Module:
    """The timm ``Attention`` inside a possibly wrapped module."""
    return module.attn if isinstance(module, PrefixAttention) else module


class PrefixAttention(nn.Module):
    """Wraps one timm ``Attention``; see the module docstring for the maths.

    The owning :class:`~avalanche_promptmoe.engine.PrefixViT` sets ``self.context`` for the duration
    of one forward; outside it the wrapper is transparent.
    """

    def __init__(self, attn: nn.Module, layer: int) -> None:
        super().__init__()
        from timm.layers import Attention

        if isinstance(attn, PrefixAttention):
            raise TypeError(
                f"layer {layer}: this ViT is already wrapped by another PrefixViT (one model per PrefixViT or "
                f"strategy); pass a copy: copy.deepcopy(vit)"
            )
        if type(attn) is not Attention:
            raise ValueError(
                f"layers: block {layer} uses {type(attn).__name__}; PrefixAttention supports timm's "
                f"standard Attention only"
            )
        self.attn = attn
        self.layer = layer
        self.context: _ForwardContext | None = None

    @property
    def num_heads(self) -> int:
        return self.attn.num_heads

    @property
    def head_dim(self) -> int:
        return self.attn.head_dim

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        ctx = self.context
        prefix = None if ctx is None else ctx.prefix_for(self.layer)
        if prefix is None and (ctx is None or (ctx.provider is None and ctx.path != "explicit")):
            return self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError("PrefixAttention does not combine a prefix with attn_mask/is_causal")
        a = self.attn
        B, N, _ = x.shape
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        qkv = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, Dh) each
        q, k = a.q_norm(q), a.k_norm(k)
        if prefix is None:
            prefix = ctx.resolve(self.layer, x, q)
        if prefix is None:  # explicit path requested, but no prefix for this layer
            out = self._attend_explicit(q, k, v, None, None, None)
        else:
            pk, pv, bias = _check_prefix(prefix, self.layer, B, a.num_heads, N, a.head_dim, q.dtype)
            if ctx.path == "explicit":
                out = self._attend_explicit(q, k, v, pk, pv, bias, record=ctx.prefix_logits)
            else:
                out = self._attend_fused(q, k, v, pk, pv, bias)
        out = out.transpose(1, 2).reshape(B, N, a.attn_dim)  # (B, N, H*Dh)
        out = a.norm(out)
        if gate is not None:
            out = out * gate
        return a.proj_drop(a.proj(out))

    def _attend_fused(self, q: Tensor, k: Tensor, v: Tensor, pk: Tensor, pv: Tensor, bias: Tensor | None) -> Tensor:
        B, H, N, _ = q.shape
        P = pk.shape[2]
        keys = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)  # (B, H, P+N, Dh)
        values = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
        mask = None
        if bias is not None:  # additive logits on the prefix columns only
            mask = q.new_zeros(B, H, N, P + N)
            mask[..., :P] = bias
        drop = self.attn.attn_drop.p if self.training else 0.0
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=drop)

    def _attend_explicit(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        pk: Tensor | None,
        pv: Tensor | None,
        bias: Tensor | None,
        record: dict[int, Tensor] | None = None,
    ) -> Tensor:
        a = self.attn
        q = q * a.scale
        logits = q @ k.transpose(-2, -1)  # (B, H, N, N)
        if pk is not None:
            prefix_logits = q @ pk.transpose(-2, -1)  # (B, H, N, P)
            if bias is not None:
                prefix_logits = prefix_logits + bias
            if record is not None:
                record[self.layer] = prefix_logits
            logits = torch.cat([prefix_logits, logits], dim=-1)
            v = torch.cat([pv.expand(q.shape[0], -1, -1, -1), v], dim=2)
        attn = a.attn_drop(logits.softmax(dim=-1))
        return attn @ v


def _check_prefix(
    prefix: Prefix | tuple, layer: int, B: int, H: int, N: int, Dh: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate one layer's prefix and cast it to the query dtype (autocast-safe)."""
    if len(prefix) == 2:
        pk, pv, bias = prefix[0], prefix[1], None
    else:
        pk, pv, bias = prefix
    for name, t in (("keys", pk), ("values", pv)):
        if t.dim() != 4:
            raise ValueError(f"prefix: layer {layer} {name} must be (B, H, P, Dh), got {tuple(t.shape)}")
        if t.shape[1] != H or t.shape[3] != Dh:
            raise ValueError(
                f"prefix: layer {layer} {name} has heads={t.shape[1]}, head_dim={t.shape[3]}; "
                f"the backbone needs heads={H}, head_dim={Dh}"
            )
        if t.shape[0] not in (1, B):
            raise ValueError(f"prefix: layer {layer} {name} has batch {t.shape[0]}, inputs have {B}")
    if pk.shape[2] != pv.shape[2]:
        raise ValueError(f"prefix: layer {layer} keys have P={pk.shape[2]}, values P={pv.shape[2]}")
    if bias is not None:
        bias = bias.to(dtype)
    return pk.to(dtype), pv.to(dtype), bias


class _ForwardContext:
    """What the prompted layers see during one ``PrefixViT`` forward."""

    def __init__(self, prefix: dict | Callable | None, path: AttentionPath) -> None:
        self.fixed = prefix if isinstance(prefix, dict) else None
        self.provider = prefix if callable(prefix) else None
        self.path = path
        self.prefix_logits: dict[int, Tensor] = {}

    def prefix_for(self, layer: int) -> Prefix | tuple | None:
        if self.fixed is not None:
            return self.fixed.get(layer)
        return None

    def resolve(self, layer: int, x_attn: Tensor, q: Tensor) -> Prefix | tuple | None:
        if self.provider is None:
            return None
        return self.provider(layer, x_attn, q)
