"""What L2P, DualPrompt and CODA-Prompt share (the CODA-Prompt code base's ``models/zoo.py``
conventions). Imports only torch.

* A prompt is ``(L, D)`` in the official layout: rows ``[0, L/2)`` are prefix **keys**, rows
  ``[L/2, L)`` prefix **values**, already in key/value space; head ``h`` takes embedding dims
  ``[h·Dh, (h+1)·Dh)`` (official ``vit.py:105-143``). :func:`prefix_from_official` turns
  ``(B, P, D)`` into the engine's ``(B, H, P, Dh)``.
* The query is the frozen, unprompted ViT's final-LayerNorm [CLS] (the engine's ``features``).
* Matching is the cosine of the detached query with each key: :func:`cosine_scores`.
* Pull losses (``1 − cos``) in three reductions: :func:`pull_loss`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PullReduction", "cosine_scores", "prefix_from_official", "pull_loss", "split_prompt"]

#: ``"cross_sum"``: the official L2P term ``(1 − cos[:, idx]).sum()`` — every query against every
#: sample's selected keys, ``B·B·k`` terms (zoo.py:598); ``"sum"``: ``Σ_b Σ_k (1 − cos[b, idx[b, k]])``
#: (the official DualPrompt term, zoo.py:593); ``"mean"``: the same per-sample sum, averaged over
#: the batch (ours: independent of the batch size and of the other samples).
PullReduction = Literal["cross_sum", "sum", "mean"]


def prefix_from_official(p: Tensor, num_heads: int) -> Tensor:
    """``(B, P, D)`` (official ``Ek``/``Ev``) → ``(B, H, P, D/H)``: head h takes dims ``[h·Dh, (h+1)·Dh)``."""
    B, P, D = p.shape
    if D % num_heads:
        raise ValueError(f"prompt: width {D} is not divisible by {num_heads} heads")
    return p.reshape(B, P, num_heads, D // num_heads).permute(0, 2, 1, 3)


def split_prompt(p: Tensor) -> tuple[Tensor, Tensor]:
    """``(..., L, D)`` → keys ``(..., L/2, D)`` = rows ``[0, L/2)``, values = rows ``[L/2, L)``."""
    half = p.shape[-2] // 2
    return p[..., :half, :], p[..., half:, :]


def cosine_scores(query: Tensor, keys: Tensor) -> Tensor:
    """``cos(q_b, k_e)``: query ``(B, D)`` (detached), keys ``(E, D)`` → ``(B, E)`` (zoo.py:586-588)."""
    q = F.normalize(query, dim=1).detach()
    return torch.einsum("bj,kj->bk", q, F.normalize(keys, dim=1))


def pull_loss(cos: Tensor, indices: Tensor, reduction: PullReduction) -> Tensor:
    """The key-pull term ``1 − cos`` of the selected keys, ``cos (B, E)``, ``indices (B, k)``."""
    if reduction == "cross_sum":
        return (1.0 - cos[:, indices]).sum()
    per_sample = (1.0 - cos.gather(1, indices)).sum(dim=1)  # (B,)
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction: expected 'cross_sum', 'sum' or 'mean', got {reduction!r}")
