"""Layer-grouped hierarchical prompts (HLGP, Jiang et al., arXiv 2511.12090): one root prompt per task,
mapped by per-group adapters to the sub-prompt its layer group shares, plus a per-layer Position
Incentive Embedding (PIE). Imports only torch; no task-matching logic (see ``methods/hlgp``).

Dimension letters: T tasks, S = 2 (keys, values), G layer groups, Y prompted layers, L prompt tokens,
H heads, Dh head dim, E = H·Dh (the root width; D = 768 at ViT-B/16), r adapter rank, B batch.

For task t and s ∈ {keys, values} (the paper's {k_t, v_t}):

    R_s^t                                                   (L, E)  root prompt
    S_{s,g}^t = R_s^t + GELU(R_s^t A_{s,g}^t + a_{s,g}^t) B_{s,g}^t + b_{s,g}^t   (L, E)  sub-prompt of group g
    P_{s,l}^t = S_{s,g(l)}^t + PIE_{s,l}^t                           (L, E) → (L, H, Dh)  prompt of layer l

Choices where the paper is silent (docs/methods.md): residual low-rank GELU adapters (``A`` ~ N(0, 1/E),
``B`` and the biases zero, so a group's sub-prompt starts as the root); one adapter per group shared
by keys and values unless ``share_kv_adapter=False``; roots ~ N(0, ``root_std``²) for the first task;
PIE zero-initialised, per task by default. Task t > 0 starts as an exact copy of task t − 1 (root,
adapters and, per task, PIE); earlier tasks are frozen (``requires_grad=False``).

The prefix lengths follow the "kv_each" convention: L key tokens and L value tokens per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerGroupedPromptGenerator", "PIEMode", "check_layer_groups"]

PIEMode = Literal["per_task", "shared", "none"]
_PIE_MODES = ("per_task", "shared", "none")


def check_layer_groups(layers: Sequence[int], groups: Sequence[Sequence[int]]) -> None:
    """Raise ``ValueError`` unless ``groups`` partitions ``layers`` into non-empty groups."""
    flat = [int(i) for g in groups for i in g]
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError(f"groups: give one or more non-empty layer groups, got {groups!r}")
    if len(set(flat)) != len(flat):
        raise ValueError(f"groups: a layer appears in more than one group: {groups!r}")
    if sorted(flat) != sorted(int(i) for i in layers):
        raise ValueError(f"groups: {groups!r} must partition the prompted layers {list(layers)} (each exactly once)")


class _TaskPrompt(nn.Module):
    """One task's parameters (see the module docstring). ``A`` = 1 (shared K/V adapter) or 2."""

    def __init__(self, adapters: int, groups: int, layers: int, length: int, width: int, rank: int, pie: bool,
                 device: torch.device | None) -> None:
        super().__init__()
        kw = {"device": device}
        self.root = nn.Parameter(torch.zeros(2, length, width, **kw))  # (S, L, E)
        self.down = nn.Parameter(torch.zeros(adapters, groups, width, rank, **kw))  # (A, G, E, r)
        self.down_bias = nn.Parameter(torch.zeros(adapters, groups, rank, **kw))  # (A, G, r)
        self.up = nn.Parameter(torch.zeros(adapters, groups, rank, width, **kw))  # (A, G, r, E)
        self.up_bias = nn.Parameter(torch.zeros(adapters, groups, width, **kw))  # (A, G, E)
        self.pie = nn.Parameter(torch.zeros(2, layers, length, width, **kw)) if pie else None  # (S, Y, L, E)


class LayerGroupedPromptGenerator(nn.Module):
    """Per-task root prompts → per-group sub-prompts → per-layer prompts (HLGP's hierarchy).

    Args:
        layers: the prompted block indices (Y of them).
        groups: a partition of ``layers`` into layer groups (G of them); a group shares one sub-prompt.
        length: L, key tokens and value tokens per layer (the paper's example: 10).
        num_heads, head_dim: the backbone's H and Dh; the root width is E = H·Dh.
        rank: r, the adapters' bottleneck width.
        share_kv_adapter: one adapter per group for both roots (default) or one each for K and V.
        pie: ``"per_task"`` (each task's own PIE, copied forward), ``"shared"`` (one PIE, trained
            while the first task trains and frozen after it) or ``"none"`` (ablation).
        root_std: σ of the first task's Gaussian root initialisation.
        generator: RNG for the first task's initialisation (later tasks are copies).

    Shapes:
        :meth:`task_prompts` → keys, values ``(T, Y, L, H, Dh)``; :meth:`prefix` → ``{layer: (keys,
        values)}`` with keys/values ``(B or 1, H, L, Dh)`` as ``PrefixViT`` takes them.
    """

    def __init__(
        self,
        layers: Sequence[int],
        groups: Sequence[Sequence[int]],
        length: int,
        num_heads: int,
        head_dim: int,
        *,
        rank: int = 32,
        share_kv_adapter: bool = True,
        pie: PIEMode = "per_task",
        root_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.layers = tuple(int(i) for i in layers)
        self.groups = tuple(tuple(int(i) for i in g) for g in groups)
        check_layer_groups(self.layers, self.groups)
        if length < 1 or rank < 1 or num_heads < 1 or head_dim < 1:
            raise ValueError(
                f"length, rank, num_heads, head_dim: must be >= 1, got {length}, {rank}, {num_heads}, {head_dim}"
            )
        if pie not in _PIE_MODES:
            raise ValueError(f"pie: expected one of {_PIE_MODES}, got {pie!r}")
        if root_std <= 0:
            raise ValueError(f"root_std: must be > 0, got {root_std}")
        self.length, self.rank = int(length), int(rank)
        self.num_heads, self.head_dim = int(num_heads), int(head_dim)
        self.width = self.num_heads * self.head_dim
        self.share_kv_adapter, self.pie_mode, self.root_std = bool(share_kv_adapter), pie, float(root_std)
        self.layer_pos = {layer: pos for pos, layer in enumerate(self.layers)}
        group_of = {layer: g for g, members in enumerate(self.groups) for layer in members}
        self.register_buffer(
            "group_index", torch.tensor([group_of[layer] for layer in self.layers], dtype=torch.long), persistent=False
        )  # (Y,) the group of each prompted layer
        self.tasks = nn.ModuleList()
        self.pie = (
            nn.Parameter(torch.zeros(2, len(self.layers), self.length, self.width)) if pie == "shared" else None
        )  # (S, Y, L, E)
        self._generator = generator

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, groups={[list(g) for g in self.groups]}, length={self.length}, "
            f"heads={self.num_heads}, head_dim={self.head_dim}, rank={self.rank}, "
            f"share_kv_adapter={self.share_kv_adapter}, pie={self.pie_mode!r}, tasks={self.num_tasks}"
        )

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def pos(self, layer: int) -> int:
        try:
            return self.layer_pos[layer]
        except KeyError:
            raise ValueError(f"layer: {layer} is not a prompted layer {list(self.layers)}") from None

    # ------------------------------------------------------------------ growth
    def add_task(self) -> int:
        """Create the next task's parameters and return its index.

        Task 0: roots ~ N(0, root_std²), adapters' down-projections ~ N(0, 1/E), the rest zero. Task
        t > 0: an exact copy of task t − 1 (new, trainable tensors); every earlier task, and a shared
        PIE, is frozen.
        """
        device = self.group_index.device
        new = _TaskPrompt(
            1 if self.share_kv_adapter else 2, self.num_groups, len(self.layers), self.length, self.width,
            self.rank, self.pie_mode == "per_task", device,
        )
        with torch.no_grad():
            if self.tasks:
                prev = self.tasks[-1]
                new.load_state_dict(prev.state_dict())
                prev.requires_grad_(False)
                if self.pie is not None:
                    self.pie.requires_grad_(False)
            else:
                new.root.copy_(_normal(new.root.shape, self.root_std, self._generator))
                new.down.copy_(_normal(new.down.shape, self.width ** -0.5, self._generator))
        self.tasks.append(new)
        return self.num_tasks - 1

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters created for ``task`` (a shared PIE is not among them)."""
        return list(self.tasks[task].parameters())

    def num_parameters_per_task(self) -> int:
        """Parameters each task adds: 2LE + A·G·(2Er + r + E) (+ 2YLE with per-task PIE)."""
        adapters = 1 if self.share_kv_adapter else 2
        n = 2 * self.length * self.width + adapters * self.num_groups * (2 * self.width * self.rank + self.rank + self.width)
        if self.pie_mode == "per_task":
            n += 2 * len(self.layers) * self.length * self.width
        return n

    # ------------------------------------------------------------------ generation
    def _check_tasks(self, tasks: Sequence[int] | None) -> list[int]:
        if not self.num_tasks:
            raise RuntimeError("LayerGroupedPromptGenerator: no task yet; call add_task() first")
        tasks = list(range(self.num_tasks)) if tasks is None else [int(t) for t in tasks]
        bad = [t for t in tasks if not 0 <= t < self.num_tasks]
        if bad or not tasks:
            raise ValueError(f"tasks: {tasks} must be non-empty indices in [0, {self.num_tasks})")
        return tasks

    def group_prompts(self, tasks: Sequence[int] | None = None) -> Tensor:
        """Sub-prompts of every group, before PIE: ``(T', S, G, L, E)`` for ``tasks`` (default: all)."""
        ps = [self.tasks[t] for t in self._check_tasks(tasks)]
        root = torch.stack([p.root for p in ps])  # (T', S, L, E)
        down = torch.stack([p.down for p in ps]).expand(-1, 2, -1, -1, -1)  # (T', S, G, E, r)
        down_b = torch.stack([p.down_bias for p in ps]).expand(-1, 2, -1, -1)  # (T', S, G, r)
        up = torch.stack([p.up for p in ps]).expand(-1, 2, -1, -1, -1)  # (T', S, G, r, E)
        up_b = torch.stack([p.up_bias for p in ps]).expand(-1, 2, -1, -1)  # (T', S, G, E)
        h = F.gelu(torch.einsum("tsle,tsger->tsglr", root, down) + down_b.unsqueeze(-2))
        return root.unsqueeze(2) + torch.einsum("tsglr,tsgre->tsgle", h, up) + up_b.unsqueeze(-2)

    def task_prompts(self, tasks: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """Every prompted layer's prompt for ``tasks`` (default: all): keys, values ``(T', Y, L, H, Dh)``."""
        tasks = self._check_tasks(tasks)
        layer = self.group_prompts(tasks)[:, :, self.group_index]  # (T', S, Y, L, E)
        if self.pie_mode == "per_task":
            layer = layer + torch.stack([self.tasks[t].pie for t in tasks])
        elif self.pie is not None:
            layer = layer + self.pie
        layer = layer.unflatten(-1, (self.num_heads, self.head_dim))  # (T', S, Y, L, H, Dh)
        return layer[:, 0], layer[:, 1]

    def mixed_prompts(self, task: int | Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample prompts ``(B or 1, Y, L, H, Dh)`` for keys and values.

        Args:
            task: an ``int`` (one task for the whole batch: leading dim 1), task ids ``(B,)`` (long:
                hard selection by indexing), or task weights ``(B, T)`` (float: Σ_t w_bt P^t, one einsum).
        """
        if isinstance(task, int):
            return self.task_prompts([task])
        if task.dim() == 1 and not task.is_floating_point():
            keys, values = self.task_prompts()
            if task.numel() and not (0 <= int(task.min()) and int(task.max()) < self.num_tasks):
                raise ValueError(f"task: ids must lie in [0, {self.num_tasks}), got {task.tolist()}")
            return keys[task], values[task]
        if task.dim() != 2 or task.shape[1] != self.num_tasks or not task.is_floating_point():
            raise ValueError(
                f"task: expected an int, ids (B,) or float weights (B, {self.num_tasks}), got "
                f"{task.dtype} {tuple(task.shape)}"
            )
        keys, values = self.task_prompts()
        w = task.to(keys.dtype)
        return torch.einsum("bt,tylhd->bylhd", w, keys), torch.einsum("bt,tylhd->bylhd", w, values)

    def prefix(self, task: int | Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """``{layer: (keys, values)}`` for ``PrefixViT``, each ``(B or 1, H, L, Dh)``; ``task`` as in
        :meth:`mixed_prompts`."""
        keys, values = self.mixed_prompts(task)
        keys, values = keys.transpose(2, 3), values.transpose(2, 3)  # (B, Y, H, L, Dh)
        return {layer: (keys[:, p], values[:, p]) for p, layer in enumerate(self.layers)}


def _normal(shape: torch.Size, std: float, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator) * std
