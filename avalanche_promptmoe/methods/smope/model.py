"""SMoPE's prompted model: one shared prefix of single-token prompt experts per prompted layer and
head, selected sparsely from prompt-attention proxy scores. Imports only torch and the torch-only
layers.

Per prompted layer l, sample b and head h (B batch, H heads, N tokens, E experts, K selected,
Dh head dim; keys ``P^K_l`` and values ``P^V_l`` are ``(E, H, Dh)``):

    s̄[b, h, e]  = mean_n(q[b, h, n]) · P^K_l[e, h]                    (B, H, E)  unscaled proxy score
    ŝ           = s̄ − ε  · (max_e s̄ − min_e s̄) · 1[e frequent]       training (adaptive noise)
    ŝ           = s̄ − ε' · (max_e s̄ − min_e s̄) · 1[e never selected] inference (ε' = 2)
    idx         = top-K_e(ŝ)                                          (B, H, K)
    prefix keys = 0, values = P^V_l[idx, h], bias = s̄[idx] / sqrt(Dh)  (B, H, K, Dh), bias (B, H, 1, K)

With zero prefix keys the prefix logit of every query token is exactly the bias, so every token gets
the same logit ``s̄_e / sqrt(Dh)`` on a selected expert and the softmax is joint over the K prompt
columns and the N token columns (DECISIONS.md §B1). The dense mode (first task's warm-up) uses all
E experts with the same bias form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...engine import PrefixProvider
from ...prompts import PromptPool
from ...routing import RoutingOutput, adaptive_noise, check_top_k, prompt_attention_scores, top_k_route
from ..model_base import PromptedClassifier

__all__ = ["SMoPEModel"]


class SMoPEModel(PromptedClassifier):
    """Frozen ViT + one sparse mixture of single-token prompt experts per layer and head + linear head.

    Le et al., "One-Prompt Strikes Back: Sparse Mixture of Experts for Prompt-based Continual
    Learning", ICLR 2026 (arXiv 2509.24483); equations from the SMoPE poster, details from the
    released code (``models/vit.py``, ``models/zoo.py``), METHODS.md §2.

    Buffers (saved with the model): ``frequent`` and ``never_selected``, bool ``(layers, H, E)``,
    set by :meth:`set_usage` from the committed usage counts. ``frequent`` drives the training noise;
    ``never_selected`` the inference exclusion (a (layer, head) row with no counts at all is not
    penalised). ``dense`` (a plain attribute) switches training forwards to all experts, no top-K.

    Args:
        backbone: a timm ``VisionTransformer`` (frozen; wrapped in a PrefixViT).
        num_classes: head outputs.
        layers: prompted blocks (default 0–5).
        num_experts: E = 25 experts per head and layer (one key and one value token each).
        top_k: K = 5.
        epsilon: ε of the training noise on frequent experts.
        inference_epsilon: ε applied at inference to never-selected experts (2.0).
        prompt_init: pool initialisation (``prompts.init_prompt_``), U(0, 1) as the released code.
        generator: RNG for the pool initialisation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layers: Sequence[int] = (0, 1, 2, 3, 4, 5),
        num_experts: int = 25,
        top_k: int = 5,
        epsilon: float = 0.4,
        inference_epsilon: float = 2.0,
        prompt_init: str = "uniform01",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(backbone, num_classes, layers)
        check_top_k(top_k, num_experts)
        if epsilon < 0 or inference_epsilon < 0:
            raise ValueError(f"epsilon, inference_epsilon: must be >= 0, got {epsilon}, {inference_epsilon}")
        self.num_experts, self.top_k = num_experts, top_k
        self.epsilon, self.inference_epsilon = float(epsilon), float(inference_epsilon)
        H, Dh = self.vit.num_heads, self.vit.head_dim
        self.pool = PromptPool(
            self.layers, num_experts, 2, H, Dh, convention="split", init=prompt_init, generator=generator,
        )  # keys/values (layers, E, 1, H, Dh)
        shape = (len(self.layers), H, num_experts)
        self.register_buffer("frequent", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("never_selected", torch.zeros(shape, dtype=torch.bool))
        self.dense = False
        self.last_routing: dict[int, RoutingOutput] = {}
        self.last_scores: dict[int, Tensor] = {}

    # ------------------------------------------------------------------ usage state
    def set_usage(self, frequent: Tensor, never_selected: Tensor) -> None:
        """Set the frequent / never-selected masks, bool ``(layers, H, E)`` (from ``ExpertUsage``)."""
        if frequent.shape != self.frequent.shape or never_selected.shape != self.never_selected.shape:
            raise ValueError(
                f"frequent, never_selected: expected shape {tuple(self.frequent.shape)}, got "
                f"{tuple(frequent.shape)} and {tuple(never_selected.shape)}"
            )
        never = never_selected.bool()
        never = never & ~never.all(dim=-1, keepdim=True)  # no counts yet for a (layer, head): no penalty
        self.frequent.copy_(frequent.bool())
        self.never_selected.copy_(never)

    def frequent_mask(self) -> Tensor:
        """Bool ``(layers, H, E)``: the frequently used experts (prototype loss, training noise)."""
        return self.frequent

    def prefix_keys(self) -> Tensor:
        """The experts' prefix keys ``(layers, E, H, Dh)`` (a view of the trainable pool)."""
        return self.pool.keys[:, :, 0]

    # ------------------------------------------------------------------ routing
    def selection_scores(self, pos: int, scores: Tensor) -> Tensor:
        """Scores the top-K is taken on: ``scores (B, H, E)`` with the training noise on the frequent
        experts (``self.training``) or the inference exclusion of never-selected experts."""
        if self.training:
            return adaptive_noise(scores, self.frequent[pos], self.epsilon)
        return adaptive_noise(scores, self.never_selected[pos], self.inference_epsilon)

    def prefix_provider(self, routing: dict[int, RoutingOutput], scores: dict[int, Tensor]) -> PrefixProvider:
        """A ``PrefixViT`` provider that records each layer's routing and raw proxy scores into the
        given dicts (``{layer: RoutingOutput}``, ``{layer: s̄ (B, H, E)}``)."""
        scale = self.vit.head_dim ** -0.5
        dense = self.dense and self.training

        def provider(layer: int, x_attn: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            pos = self.pool.pos(layer)
            keys = self.pool.keys[pos, :, 0]  # (E, H, Dh)
            values = self.pool.values[pos, :, 0].transpose(0, 1)  # (H, E, Dh)
            s = prompt_attention_scores(q, keys)  # (B, H, E), unscaled
            scores[layer] = s
            B, H, E = s.shape
            if dense:
                idx = torch.arange(E, device=s.device).expand(B, H, E)
                routing[layer] = RoutingOutput(idx, torch.softmax(s.float(), -1).to(s.dtype), s)
                pv = values.unsqueeze(0)  # (1, H, E, Dh)
                bias = s.unsqueeze(2) * scale  # (B, H, 1, E)
            else:
                out = top_k_route(self.selection_scores(pos, s), self.top_k)
                routing[layer] = out
                heads = torch.arange(H, device=s.device).view(1, H, 1)
                pv = values[heads, out.indices]  # (B, H, K, Dh)
                bias = s.gather(-1, out.indices).unsqueeze(2) * scale  # (B, H, 1, K), unpenalised
            pk = q.new_zeros(1, H, pv.shape[2], q.shape[-1])
            return pk, pv, bias

        return provider

    def unpenalised_top_k(self) -> dict[int, Tensor]:
        """Top-K of the raw proxy scores of the last forward, ``{layer: (B, H, K)}`` (usage counting)."""
        k = self.top_k
        return {layer: torch.topk(s.detach(), k, dim=-1).indices for layer, s in self.last_scores.items()}

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor) -> Tensor:
        """Prompted pre-logit features ``(B, D)``; records ``last_routing`` and ``last_scores``."""
        routing: dict[int, RoutingOutput] = {}
        scores: dict[int, Tensor] = {}
        feats = self.vit(x, self.prefix_provider(routing, scores))
        self.last_routing, self.last_scores, self.last_features = routing, scores, feats
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``: one prompted backbone pass, then the head."""
        return self.head(self.forward_features(x))
