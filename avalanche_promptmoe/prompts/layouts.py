"""How a batch of per-sample prefix prompts becomes the (keys, values) each sample attends to.

``"kv"`` (ours, the default): sample b attends to its own prompt's keys and values.
``"hide_official"``: HiDe-Prompt's released code (thu-ml/HiDe-Prompt @0ed43333,
``peft/prompt/hide_prompt.py`` ``EPrompt.forward``: ``prompt[:, :, idx]`` is
``(layers, 2, B, …)`` and is reshaped to ``(layers, B, 2, …)`` *without a permute*). Flattening
(key/value s, sample j) as ``f = s·B + j``, sample b then gets the keys of entry ``f = 2b`` and the
values of entry ``f = 2b + 1``: at B = 1 this is the same as ``"kv"``; at B = 4 samples 0, 1 get
(K, K) and samples 2, 3 get (V, V), taken from samples (0, 1), (2, 3), (0, 1), (2, 3). The
published HiDe numbers come from this code; it is reproduced only under ``recipe="official"``.
Imports only torch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["PrefixLayout", "arrange_prefix"]

PrefixLayout = Literal["kv", "hide_official"]


def arrange_prefix(prompts: Tensor, layout: PrefixLayout, chunk: int | None = None) -> Tensor:
    """Per-sample prompts ``(B, Y, 2, H, L, Dh)`` (Y prompted layers, axis 2 = keys, values) →
    the prompts each sample attends to, same shape (a view for ``"kv"``, a copy otherwise).

    ``chunk``: ``"hide_official"`` acts on each run of ``chunk`` consecutive samples on its own (one
    GPU's batch of the official run, i.e. a virtual rank); ``None``: on the whole batch."""
    if prompts.dim() != 6 or prompts.shape[2] != 2:
        raise ValueError(f"prompts: expected (B, layers, 2, H, L, Dh), got shape {tuple(prompts.shape)}")
    if layout == "kv":
        return prompts
    if layout == "hide_official":
        if chunk is not None and 0 < chunk < prompts.shape[0]:
            return torch.cat([arrange_prefix(p, layout) for p in prompts.split(chunk)])
        B, Y = prompts.shape[:2]
        official = prompts.permute(1, 2, 0, 3, 4, 5)  # (Y, 2, B, H, L, Dh): the official gather's order
        return official.reshape(Y, B, 2, *prompts.shape[3:]).transpose(0, 1)  # reshape, no permute
    raise ValueError(f"layout: expected 'kv' or 'hide_official', got {layout!r}")
