"""Method losses as plain functions (torch only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["prototype_loss", "router_margin_loss", "training_class_mask"]


def prototype_loss(
    old_keys: Tensor, old_frequent: Tensor, cur_keys: Tensor, top_k: int, reduction: str = "mean"
) -> Tensor:
    """SMoPE's prototype loss for one layer: old frequent prefix keys keep choosing the same experts.

    For each head h and each old frequent key ``p = old_keys[j, h]``, the targets are the top-K
    experts of ``p`` under the old keys (``p · old_keys[:, h]``); the loss is the cross-entropy of
    ``p · cur_keys[:, h]`` against each target, averaged (METHODS.md §2.1).

    Args:
        old_keys, cur_keys: ``(E, H, Dh)`` prefix keys at the end of the previous task / now.
        old_frequent: bool ``(H, E)``, the frequent experts when the old keys were saved.
        top_k: K.
        reduction: ``"mean"`` over heads, frequent keys and targets; ``"sum"`` = Σ_h Σ_k of the mean
            over each head's frequent keys (the released SMoPE code's scale).
    Returns:
        a scalar (0 when no expert is frequent).
    """
    E, H, _ = old_keys.shape
    old = old_keys.detach().permute(1, 0, 2)  # (H, E, Dh)
    cur = cur_keys.permute(1, 0, 2)  # (H, E, Dh)
    targets = torch.topk(old @ old.transpose(1, 2), top_k, dim=-1).indices  # (H, E, K)
    logits = old @ cur.transpose(1, 2)  # (H, E, E): rows = old keys, cols = current experts
    mask = old_frequent.to(logits.device)  # (H, E)
    if not mask.any():
        return cur_keys.sum() * 0.0
    if reduction == "sum":
        ce = torch.stack([
            F.cross_entropy(logits.reshape(H * E, E), targets[..., k].reshape(-1), reduction="none").view(H, E)
            for k in range(top_k)
        ])  # (K, H, E)
        per_head = (ce * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (K, H)
        return per_head.sum()
    if reduction != "mean":
        raise ValueError(f"reduction: expected 'mean' or 'sum', got {reduction!r}")
    logits = logits[mask]  # (n, E)
    targets = targets[mask]  # (n, K)
    losses = [F.cross_entropy(logits, targets[:, k]) for k in range(top_k)]
    return torch.stack(losses).mean()


def router_margin_loss(scores: Tensor, indices: Tensor, epsilon: float) -> Tensor:
    """SMoPE's router loss: CE over the proxy scores with each selected expert as target, after adding
    the margin ``ε · (max − min)`` to the non-selected experts.

    Args:
        scores: ``(B, H, E)`` proxy scores; indices: ``(B, H, K)`` selected experts.
    """
    E = scores.shape[-1]
    spread = (scores.amax(-1, keepdim=True) - scores.amin(-1, keepdim=True)).detach()
    selected = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, indices, True)
    logits = (scores + epsilon * spread * (~selected).to(scores.dtype)).reshape(-1, E)
    targets = indices.reshape(-1, indices.shape[-1])
    return torch.stack([F.cross_entropy(logits, targets[:, k]) for k in range(targets.shape[1])]).mean()


def training_class_mask(base: Tensor, targets: Tensor, seen: Tensor | None = None) -> Tensor:
    """Bool ``(C,)`` mask of the classes the training CE admits for one mini-batch (DECISIONS.md §C2,
    widened for rehearsal).

    ``base`` (the method's :meth:`train_mask_classes`: the current experience's classes; ``joint``:
    all seen) plus every class present in ``targets``: a rehearsal plugin (Avalanche's
    ``ReplayPlugin``...) mixes old-class samples into the batch, and their own logits must compete,
    or their loss is ~1e4. Without rehearsal the batch holds only ``base`` classes, so this is
    exactly the per-experience mask. ``seen`` (optional bool ``(C,)``) is added too: old classes kept
    unmasked for plugins that read old-class logits (LwF's distillation). Computed on the device
    (no host sync per step).

    Args:
        base: bool ``(C,)``; targets: class ids ``(B,)`` (other shapes add nothing); seen: bool ``(C,)``.
    """
    mask = base.clone()
    if targets.ndim == 1 and targets.numel():
        mask[targets.to(mask.device).long()] = True
    if seen is not None:
        mask |= seen.to(mask.device)
    return mask
