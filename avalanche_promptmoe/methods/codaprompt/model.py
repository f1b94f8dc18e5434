"""CODA-Prompt as in its official code (``models/zoo.py: CodaPrompt``): per prompted layer a set of
prompt components with keys and attention vectors, combined per sample by a cosine weight, as
prefix keys/values on the shared engine. Imports only torch and the torch-only layers.

Per prompted layer l (B batch, f components so far, L prompt length, D width):

    q      = final-LayerNorm [CLS] of the frozen, unprompted ViT                 (B, D), no grad
    α[b,m] = cos(q_b ⊙ A_m, K_m)    (no softmax, may be negative)                (B, f)
    P[b]   = Σ_m α[b,m] p_m;  Ek = P[:, :L/2], Ev = P[:, L/2:]                   (B, L/2, D)
    ortho  = μ · Σ_{M ∈ K, A, p.view(f, L·D)} mean((M Mᵀ − I)²), training only (all f rows)

Components are added per task (``components_per_task``, official ``pool / n_tasks``), drawn with
classical Gram–Schmidt against every earlier row (:func:`gram_schmidt_rows`); earlier tasks'
components are frozen. Training and evaluation forwards are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...prompts import prefix_lengths
from ..model_base import PromptedClassifier
from ..query_match import prefix_from_official, split_prompt

__all__ = ["CODAPromptModel", "gram_schmidt_rows", "ortho_penalty"]

#: ``draw(kind, layer, shape) -> Tensor``: the Gaussian draws for new rows (``kind`` ∈ k, a, p).
DrawFn = Callable[[str, int, tuple[int, ...]], Tensor]


def gram_schmidt_rows(old: Tensor, draws: Tensor) -> Tensor:
    """New rows ``(n, d)`` from ``draws (n, d)``: each draw minus its projections onto every earlier
    row (``old (s, d)`` and the new rows before it, unnormalised), in order, then each normalised —
    the official classical Gram–Schmidt (zoo.py:402-458), with the draws given instead of taken from
    the global RNG. ``old`` is not re-orthonormalised."""
    s, d = old.shape
    n = draws.shape[0]
    if s + n > d:
        raise ValueError(
            f"components: {s + n} components of width {d} cannot be orthogonalised (the official code "
            f"loops forever); use at most {d} components per layer (fewer per task or fewer tasks)"
        )
    rows = [old[j] for j in range(s)]
    for i in range(n):
        v = draws[i]
        acc: Tensor | float = 0
        for u in rows:
            den = (u * u).sum()
            if den < 1e-8:
                raise ValueError("components: an earlier component is zero; Gram–Schmidt needs non-zero rows")
            acc = acc + (v * u).sum() / den * u
        rows.append(v - acc)
    new = torch.stack(rows[s:])
    return new / new.norm(dim=1, keepdim=True)


def ortho_penalty(m: Tensor) -> Tensor:
    """``mean((M Mᵀ − I)²)`` for ``m (f, d)`` (zoo.py:527-528)."""
    return ((m @ m.T - torch.eye(m.shape[0], device=m.device, dtype=m.dtype)) ** 2).mean()


class CODAPromptModel(PromptedClassifier):
    """Frozen ViT + CODA-Prompt components per prompted layer + linear head.

    Parameters, one chunk per task t (``ParameterList`` index t): ``comp_prompts[t] (layers, c, L, D)``
    (rows ``[0, L/2)`` keys), ``comp_keys[t]`` and ``comp_attn[t]`` ``(layers, c, D)``. Only the last
    chunk is trainable. Concatenating the chunks gives the official ``e_p_l``/``e_k_l``/``e_a_l``
    rows ``[0, f)``.

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in a PrefixViT).
        num_classes: head outputs.
        layers: prompted blocks ``[0..4]``; components_per_task: 10 (official 100 / 10 tasks);
            length: L = 8 (4 key + 4 value tokens); ortho_mu: μ = 0.0 (official HEAD script).
        generator: RNG of the Gram–Schmidt draws.

    After each forward: ``last_alpha {layer: (B, f)}``, ``last_a_query {layer: q ⊙ A (B, f, D)}``, ``last_prefix {layer: (Ek, Ev)}`` (official
    layout), ``last_aux_loss`` (the ortho term in training when μ > 0, else ``None``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0, 1, 2, 3, 4),
        components_per_task: int = 10,
        length: int = 8,
        ortho_mu: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, tuple(layers))
        prefix_lengths(length, "split")
        if components_per_task < 1:
            raise ValueError(f"components_per_task: must be >= 1, got {components_per_task}")
        if ortho_mu < 0:
            raise ValueError(f"ortho_mu: must be >= 0, got {ortho_mu}")
        self.components_per_task, self.length, self.ortho_mu = components_per_task, length, float(ortho_mu)
        self.comp_prompts, self.comp_keys, self.comp_attn = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        self._generator = generator
        self.last_alpha: dict[int, Tensor] = {}
        self.last_a_query: dict[int, Tensor] = {}
        self.last_prefix: dict[int, tuple[Tensor, Tensor]] = {}
        self.last_aux_loss: Tensor | None = None
        self.last_layer_losses: dict[int, Tensor] = {}

    @property
    def num_tasks(self) -> int:
        return len(self.comp_keys)

    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """All components so far: prompts ``(layers, f, L, D)``, keys, attention ``(layers, f, D)``."""
        if not self.num_tasks:
            raise RuntimeError("CODAPromptModel: no components yet; call add_task() first")
        return (torch.cat(list(self.comp_prompts), 1), torch.cat(list(self.comp_keys), 1),
                torch.cat(list(self.comp_attn), 1))

    def _draw(self, kind: str, layer: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self._generator)

    @torch.no_grad()
    def add_task(self, draw: DrawFn | None = None) -> int:
        """Append the next task's components (Gram–Schmidt against the earlier ones, per layer, in the
        official order k, a, p) and freeze the earlier chunks. ``draw`` replaces the generator."""
        draw = draw or self._draw
        c, L, D, n = self.components_per_task, self.length, self.vit.embed_dim, len(self.layers)
        device = self.head.weight.device
        old = self.components() if self.num_tasks else None
        new = {"k": [], "a": [], "p": []}
        for pos, layer in enumerate(self.layers):
            for kind, width in (("k", D), ("a", D), ("p", L * D)):
                rows = (old[1] if kind == "k" else old[2] if kind == "a" else old[0].flatten(2))[pos] if old else None
                rows = rows.detach().cpu() if rows is not None else torch.zeros(0, width)
                new[kind].append(gram_schmidt_rows(rows, draw(kind, layer, (c, width)).to(rows.dtype)))
        for chunk in (*self.comp_prompts, *self.comp_keys, *self.comp_attn):
            chunk.requires_grad_(False)
        self.comp_prompts.append(nn.Parameter(torch.stack(new["p"]).view(n, c, L, D).to(device)))
        self.comp_keys.append(nn.Parameter(torch.stack(new["k"]).to(device)))
        self.comp_attn.append(nn.Parameter(torch.stack(new["a"]).to(device)))
        return self.num_tasks - 1

    def structure(self) -> dict:
        return {"num_tasks": self.num_tasks}

    def grow_to(self, structure: dict) -> None:
        scratch = torch.Generator().manual_seed(0)  # placeholder values, overwritten by the checkpoint
        while self.num_tasks < int(structure["num_tasks"]):
            self.add_task(draw=lambda kind, layer, shape: torch.randn(shape, generator=scratch))

    def forward_features(self, x: Tensor) -> Tensor:
        """Prompted final-LayerNorm [CLS] features ``(B, D)`` with every component so far."""
        q = self.plain_features(x)
        H = self.vit.num_heads
        prompts, keys, attn = self.components()
        prefix, alphas, a_queries, official, losses = {}, {}, {}, {}, {}
        for pos, layer in enumerate(self.layers):
            K, A, p = keys[pos], attn[pos], prompts[pos]
            a_query = torch.einsum("bd,kd->bkd", q, A)
            alpha = torch.einsum("bkd,kd->bk", F.normalize(a_query, dim=2), F.normalize(K, dim=1))
            ek, ev = split_prompt(torch.einsum("bk,kld->bld", alpha, p))
            alphas[layer], a_queries[layer], official[layer] = alpha, a_query, (ek, ev)
            prefix[layer] = (prefix_from_official(ek, H), prefix_from_official(ev, H))
            if self.training and self.ortho_mu > 0:
                losses[layer] = ortho_penalty(K) + ortho_penalty(A) + ortho_penalty(p.flatten(1))
        self.last_alpha, self.last_a_query, self.last_prefix = alphas, a_queries, official
        self.last_layer_losses = {layer: self.ortho_mu * v for layer, v in losses.items()}
        self.last_aux_loss = torch.stack(list(self.last_layer_losses.values())).sum() if losses else None
        self.last_features = self.vit(x, prefix)
        return self.last_features

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``: query pass, prompted pass, head."""
        return self.head(self.forward_features(x))
