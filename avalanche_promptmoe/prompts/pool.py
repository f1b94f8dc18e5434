"""Per-layer prompt-expert pools for prefix keys and values.

Each prompted layer has a key pool and a value pool of shape ``(E, L, H, Dh)``: E experts, L prefix
tokens per expert, H heads, Dh head dim. Both are stored as one parameter each, stacked over layers:
``keys``/``values`` of shape ``(n_layers, E, L, H, Dh)``; ``layer_pos`` maps a block index to its row.

Two prompt-length conventions (METHODS.md §0.1) are expressible through :func:`prefix_lengths`:

* ``"kv_each"`` (HiDe, DualPrompt-pytorch, NoRGa, Hash): ``length=L`` means L key tokens **and** L
  value tokens per expert.
* ``"split"`` (CODA-Prompt, SMoPE): ``length=L`` is split in half, L/2 keys and L/2 values; SMoPE's
  "prompt length 50" is 25 single-token experts (``PromptPool(num_experts=25, length=1)``).

Initialisation (``init``): ``"uniform_pm1"`` = U(-1, 1) (HiDe/NoRGa), ``"uniform01"`` = U(0, 1)
(CODA/SMoPE's ``nn.init.uniform_``), ``"normal"`` = N(0, 0.02²), ``"zeros"``. An explicit
``torch.Generator`` makes it reproducible without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["PromptPool", "init_prompt_", "prefix_lengths"]

InitName = Literal["uniform_pm1", "uniform01", "normal", "zeros"]


def prefix_lengths(length: int, convention: Literal["kv_each", "split"]) -> tuple[int, int]:
    """(key tokens, value tokens) for a prompt ``length`` under a length convention."""
    if length <= 0:
        raise ValueError(f"length: must be positive, got {length}")
    if convention == "kv_each":
        return length, length
    if convention == "split":
        if length % 2:
            raise ValueError(f"length: the 'split' convention needs an even length, got {length}")
        return length // 2, length // 2
    raise ValueError(f"convention: expected 'kv_each' or 'split', got {convention!r}")


def init_prompt_(t: Tensor, init: InitName, generator: torch.Generator | None = None) -> Tensor:
    """Initialise a prompt tensor in place (see the module docstring)."""
    with torch.no_grad():
        if init == "uniform_pm1":
            t.uniform_(-1.0, 1.0, generator=generator)
        elif init == "uniform01":
            t.uniform_(0.0, 1.0, generator=generator)
        elif init == "normal":
            t.normal_(0.0, 0.02, generator=generator)
        elif init == "zeros":
            t.zero_()
        else:
            raise ValueError(f"init: unknown initialisation {init!r}")
    return t


class PromptPool(nn.Module):
    """Key and value expert pools for several prompted layers.

    Args:
        layers: the prompted block indices.
        num_experts: E, experts per layer.
        length: prompt length per expert, read under ``convention``.
        num_heads, head_dim: the backbone's H and Dh.
        convention: ``"kv_each"`` or ``"split"`` (see module docstring).
        init: initialisation scheme.
        generator: optional RNG for the initialisation.
    """

    def __init__(
        self,
        layers: Iterable[int],
        num_experts: int,
        length: int,
        num_heads: int,
        head_dim: int,
        *,
        convention: Literal["kv_each", "split"] = "kv_each",
        init: InitName = "uniform_pm1",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.layers = tuple(int(i) for i in layers)
        if not self.layers:
            raise ValueError("layers: give at least one prompted layer")
        if num_experts <= 0:
            raise ValueError(f"num_experts: must be positive, got {num_experts}")
        key_len, value_len = prefix_lengths(length, convention)
        if key_len != value_len:  # pragma: no cover - both conventions are symmetric
            raise ValueError("length: keys and values must have the same length")
        self.num_experts, self.length = num_experts, key_len
        self.num_heads, self.head_dim = num_heads, head_dim
        self.layer_pos = {layer: pos for pos, layer in enumerate(self.layers)}
        shape = (len(self.layers), num_experts, key_len, num_heads, head_dim)
        self.keys = nn.Parameter(init_prompt_(torch.empty(shape), init, generator))
        self.values = nn.Parameter(init_prompt_(torch.empty(shape), init, generator))

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, experts={self.num_experts}, length={self.length}, "
            f"heads={self.num_heads}, head_dim={self.head_dim}"
        )

    def pos(self, layer: int) -> int:
        try:
            return self.layer_pos[layer]
        except KeyError:
            raise ValueError(f"layer: {layer} is not in this pool's layers {list(self.layers)}") from None

    def combine(self, layer: int, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Mix experts with dense per-sample weights.

        Args:
            weights: ``(B, E)``; zero for unselected experts (see ``routing.dense_weights``).
        Returns:
            keys, values ``(B, H, L, Dh)``: ``sum_e weights[b, e] * pool[e]``, one matmul, no gather.
        """
        p = self.pos(layer)
        w = weights.to(self.keys.dtype)
        keys = torch.einsum("be,elhd->bhld", w, self.keys[p])
        values = torch.einsum("be,elhd->bhld", w, self.values[p])
        return keys, values

    def num_parameters(self) -> int:
        return self.keys.numel() + self.values.numel()
