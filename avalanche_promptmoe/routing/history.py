"""Routing history: cumulative expert usage, the frequent set, Hash's penalty and its modulation of
the frequent experts' updates (HGM), and SMoPE's adaptive noise. Pure tensor code, vectorised over
the batch."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ExpertUsage",
    "adaptive_noise",
    "count_selections",
    "history_penalty",
    "read_scores",
    "scale_frequent_grads",
    "standardise_scores",
    "scale_frequent_update",
]

FrequentRule = Literal["top_k", "above_mean"]
#: Units Hash's router scores are read in before the penalty: ``"raw"`` — ``mean_n(x W_r) / √d`` as
#: the router computes them; ``"standardised"`` — per sample over the experts (:func:`standardise_scores`).
ScoreReading = Literal["raw", "standardised"]


def count_selections(indices: Tensor, num_experts: int) -> Tensor:
    """Selections per expert: ``indices (B, [H,] K)`` → counts ``([H,] E)`` (int64), summed over batch."""
    if indices.dim() == 2:  # (B, K) → (E,)
        return torch.bincount(indices.reshape(-1), minlength=num_experts)
    H = indices.shape[1]  # (B, H, K) → (H, E)
    offsets = torch.arange(H, device=indices.device).view(1, H, 1) * num_experts
    flat = (indices + offsets).reshape(-1)
    return torch.bincount(flat, minlength=H * num_experts).view(H, num_experts)


def history_penalty(scores: Tensor, frequent: Tensor, delta: float) -> Tensor:
    """Hash's stepwise HDR penalty: ``s - δ`` on the frequent experts, unchanged elsewhere.

    Args:
        scores: ``(..., E)``; frequent: bool ``(E,)`` (or broadcastable); delta: δ ≥ 0.
    """
    if delta < 0:
        raise ValueError(f"delta: the history penalty must be >= 0, got {delta}")
    return scores - delta * frequent.to(scores.dtype)


def standardise_scores(scores: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-sample standardisation over the experts: ``(s − mean_e s) / (std_e s + eps)``.

    Hash's ``score_reading="standardised"``: the top-K order of a sample is unchanged, and a penalty
    δ applied afterwards is in units of that sample's score spread (its standard deviation over the
    experts), whatever the router's scale. Differentiable; ``scores (..., E)`` → same shape.
    """
    mean = scores.mean(dim=-1, keepdim=True)
    std = scores.std(dim=-1, keepdim=True, unbiased=False)
    return (scores - mean) / (std + eps)


def read_scores(scores: Tensor, reading: ScoreReading) -> Tensor:
    """Router scores ``(..., E)`` in the units the history penalty is applied in (``reading``)."""
    if reading == "raw":
        return scores
    if reading == "standardised":
        return standardise_scores(scores)
    raise ValueError(f"reading: expected 'raw' or 'standardised', got {reading!r}")


def adaptive_noise(scores: Tensor, frequent: Tensor, epsilon: float) -> Tensor:
    """SMoPE's adaptive noise: subtract ``ε · (max_e s − min_e s)`` from the frequent experts.

    Deterministic (no RNG), as the released code. Callers apply it in training only; at inference
    the same function with ``frequent = never_selected`` and ``ε = 2`` excludes unused experts.

    Args:
        scores: ``(..., E)``; frequent: bool broadcastable to ``scores``; epsilon: ε ≥ 0.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon: must be >= 0, got {epsilon}")
    spread = scores.amax(dim=-1, keepdim=True) - scores.amin(dim=-1, keepdim=True)
    return scores - epsilon * spread.detach() * frequent.to(scores.dtype)


def _row_mask(frequent: Tensor, like: Tensor, expert_dim: int) -> Tensor:
    """``frequent`` (bool, ``like``'s first ``expert_dim + 1`` dims) viewed to broadcast over ``like``."""
    lead = tuple(like.shape[: expert_dim + 1])
    if frequent.dtype != torch.bool or tuple(frequent.shape) != lead:
        raise ValueError(
            f"frequent: expected a bool mask of shape {lead} (the parameter's dims up to the expert dim "
            f"{expert_dim}), got {frequent.dtype} {tuple(frequent.shape)}"
        )
    return frequent.to(like.device).view(*lead, *([1] * (like.dim() - expert_dim - 1)))


def scale_frequent_grads(grad: Tensor, frequent: Tensor, alpha: float, expert_dim: int = 1) -> Tensor:
    """HGM read literally (``hgm="grad"``): multiply the frequent experts' gradient rows by α.

    Adam and AdamW divide by the running gradient magnitude, so a constant per-parameter factor
    cancels there (the update is unchanged up to ε); only SGD sees it. :func:`scale_frequent_update`
    is what the paper means (a lower learning rate for the frequent experts) under any optimizer.

    Args:
        grad: a pool gradient, e.g. ``(layers, E, L, H, Dh)``.
        frequent: bool ``(layers, E)`` aligned with ``grad``'s first dims up to ``expert_dim``.
        alpha: α in (0, 1]; α = 1 is the identity.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha: the gradient scale must be in (0, 1], got {alpha}")
    mask = _row_mask(frequent, grad, expert_dim)
    scale = torch.where(mask, torch.as_tensor(alpha, dtype=grad.dtype), torch.as_tensor(1.0, dtype=grad.dtype))
    return grad * scale


def scale_frequent_update(before: Tensor, after: Tensor, frequent: Tensor, alpha: float,
                          expert_dim: int = 1) -> Tensor:
    """Hash's HGM (``hgm="update"``): the frequent experts take α × the step the optimizer made.

    Returns ``before + α (after − before)`` on the frequent rows and ``after`` itself (bit for bit)
    elsewhere, so it is a per-row learning-rate factor whatever the optimizer (Adam, AdamW, SGD...);
    the optimizer's state still saw the true gradient.

    Args:
        before, after: the parameter before and after ``optimizer.step()``, e.g. ``(layers, E, L, H, Dh)``.
        frequent: bool ``(layers, E)`` aligned with the first dims up to ``expert_dim``.
        alpha: α in (0, 1]; α = 1 returns ``after``.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha: the update scale must be in (0, 1], got {alpha}")
    if before.shape != after.shape:
        raise ValueError(f"before, after: shapes differ, {tuple(before.shape)} vs {tuple(after.shape)}")
    mask = _row_mask(frequent, after, expert_dim)
    if alpha == 1.0:
        return after
    return torch.where(mask, before + alpha * (after - before), after)


class ExpertUsage:
    """Cumulative expert-selection counts shaped ``(layers, heads, experts)`` (heads = 1 for Hash).

    Selections are accumulated in ``pending`` and added to ``counts`` by :meth:`commit` (Hash commits
    at the end of each task, so its penalty is constant within a task). An expert with zero count is
    never frequent; ties break towards the lower index.

    Args:
        layers, heads, experts: the counter's shape.
        rule: ``"top_k"`` — the ``k`` most-used experts per (layer, head) (Hash); ``"above_mean"`` —
            count ≥ the mean of the non-zero counts, and sticky once set (SMoPE).
        k: size of the frequent set under ``"top_k"``.
    """

    def __init__(self, layers: int, heads: int, experts: int, *, rule: FrequentRule = "top_k", k: int = 1) -> None:
        if rule not in ("top_k", "above_mean"):
            raise ValueError(f"rule: expected 'top_k' or 'above_mean', got {rule!r}")
        if rule == "top_k" and not 1 <= k <= experts:
            raise ValueError(f"k: must be in [1, {experts}], got {k}")
        self.shape = (layers, heads, experts)
        self.rule, self.k = rule, k
        self.counts = torch.zeros(self.shape, dtype=torch.long)
        self.pending = torch.zeros(self.shape, dtype=torch.long)
        self.sticky = torch.zeros(self.shape, dtype=torch.bool)
        self.snapshots: list[Tensor] = []

    def record(self, layer_pos: int, indices: Tensor) -> None:
        """Add one batch of selections ``(B, K)`` or ``(B, H, K)`` for a layer to ``pending``."""
        c = count_selections(indices.detach(), self.shape[2]).cpu()
        self.pending[layer_pos] += c.view(-1, self.shape[2]).expand(self.shape[1], -1) if c.dim() == 1 else c

    def commit(self, snapshot: bool = True) -> None:
        """Move ``pending`` into ``counts``; optionally keep a snapshot (one per task)."""
        self.counts += self.pending
        self.pending.zero_()
        if self.rule == "above_mean":
            self.sticky |= self._above_mean()
        if snapshot:
            self.snapshots.append(self.counts.clone())

    def _above_mean(self) -> Tensor:
        c = self.counts.double()
        nz = c > 0
        mean = (c * nz).sum(-1, keepdim=True) / nz.sum(-1, keepdim=True).clamp(min=1)
        return nz & (c >= mean)

    def frequent(self) -> Tensor:
        """Bool ``(layers, heads, experts)``: the frequently used set from the committed counts."""
        if self.rule == "above_mean":
            return self.sticky | self._above_mean()
        E = self.shape[2]
        # rank by count, ties towards the lower index: key = count * E + (E - 1 - index)
        key = self.counts * E + (E - 1 - torch.arange(E))
        top = torch.topk(key, self.k, dim=-1).indices
        mask = torch.zeros(self.shape, dtype=torch.bool).scatter(-1, top, True)
        return mask & (self.counts > 0)

    def never_selected(self) -> Tensor:
        """Bool ``(layers, heads, experts)``: experts with zero committed count."""
        return self.counts == 0

    def state_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "rule": self.rule,
            "k": self.k,
            "counts": self.counts.clone(),
            "pending": self.pending.clone(),
            "sticky": self.sticky.clone(),
            "snapshots": [s.clone() for s in self.snapshots],
        }

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["shape"]) != self.shape or state["rule"] != self.rule:
            raise ValueError(
                f"state: usage of shape {tuple(state['shape'])}/{state['rule']} does not match "
                f"{self.shape}/{self.rule}"
            )
        self.k = int(state["k"])
        self.counts = state["counts"].clone().long()
        self.pending = state["pending"].clone().long()
        self.sticky = state["sticky"].clone().bool()
        self.snapshots = [s.clone().long() for s in state["snapshots"]]
