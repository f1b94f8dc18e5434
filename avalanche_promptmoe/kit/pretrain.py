"""Supervised pretraining of the kit's reference ViT on the upstream classes (the recipe of kit v1).

The recipe (:class:`PretrainRecipe`; its defaults are the settings kit v1's ``reference_vit.pth``
was made with, ``reference_vit.json``'s ``pretraining``): AdamW (lr 1e-3, weight decay 0.05,
betas 0.9/0.999), linear warm-up for 2 epochs then cosine decay per step, batch 256, 30 epochs,
random crop (4-px reflect padding) + horizontal flip, mixup alpha 0.2 (no cutmix), label smoothing
0.1, drop path 0.05, gradient clip 1.0, seed 0; bf16 autocast on CUDA. Inputs are uint8 ``(N, 3, 32,
32)`` tensors normalized with mean = std = 0.5.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PretrainRecipe", "pretrain_vit", "classify_accuracy", "pooled_features"]

_MEAN_STD = 0.5


@dataclass
class PretrainRecipe:
    """Hyper-parameters of the reference ViT's pretraining (defaults: kit v1)."""

    epochs: int = 30
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    mixup: float = 0.2
    cutmix: float = 0.0
    label_smoothing: float = 0.1
    drop_path: float = 0.05
    clip_grad: float = 1.0
    crop_padding: int = 4
    seed: int = 0
    max_steps: int | None = None  # stop early (tests); None = every epoch in full

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _normalize(x: Tensor) -> Tensor:
    return (x.float() / 255 - _MEAN_STD) / _MEAN_STD


def _augment(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Random crop with ``pad``-px reflect padding and a horizontal flip; uint8 in, normalized out."""
    b, _, h, w = x.shape
    xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    rows = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen).to(x.device) + torch.arange(h, device=x.device)
    cols = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen).to(x.device) + torch.arange(w, device=x.device)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(3, device=x.device)[None, :, None, None]
    out = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return (out / 255 - _MEAN_STD) / _MEAN_STD


def pretrain_vit(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, recipe: PretrainRecipe, *,
                 device: str | torch.device = "cpu", progress: bool = True) -> nn.Module:
    """Train ``model`` (a timm ViT with a ``num_classes`` head) on uint8 images ``x (N, 3, H, W)`` and
    labels ``y (N,)`` with ``recipe``; returns it in eval mode. Seeds Python, numpy and torch with
    ``recipe.seed`` (timm's mixup draws from numpy's global generator)."""
    import timm.data
    import timm.loss
    from tqdm.auto import tqdm

    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    device = torch.device(device)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    batch = max(2, min(recipe.batch, len(x)) // 2 * 2)  # mixup needs an even batch
    steps_per_epoch = max(1, len(x) // batch)
    total = recipe.epochs * steps_per_epoch
    if recipe.max_steps is not None:
        total = min(total, recipe.max_steps)
    warm = max(1, int(recipe.warmup_epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.999))
    full = recipe.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / full))))
    mix = timm.data.Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix,
                          label_smoothing=recipe.label_smoothing, num_classes=num_classes)
    crit = timm.loss.SoftTargetCrossEntropy()
    amp = device.type == "cuda"
    with tqdm(total=total, desc="pretraining the reference ViT", unit="step", disable=not progress) as bar:
        step = 0
        while step < total:
            order = torch.randperm(len(x), generator=gen).to(device)
            for s in range(steps_per_epoch):
                if step >= total:
                    break
                idx = order[s * batch:(s + 1) * batch]
                xb, yb = mix(_augment(x[idx], recipe.crop_padding, gen), y[idx])
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = crit(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
                opt.step()
                sched.step()
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.no_grad()
def classify_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, device: str | torch.device = "cpu",
                      batch: int = 1024) -> float:
    """Top-1 accuracy of ``model``'s head on uint8 images ``x`` (normalized here)."""
    model.eval()
    device = torch.device(device)
    correct = 0
    for k in range(0, len(x), batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(_normalize(x[k:k + batch].to(device)))
        correct += int((logits.argmax(1).cpu() == y[k:k + batch].cpu()).sum())
    return correct / max(1, len(x))


@torch.no_grad()
def pooled_features(model: nn.Module, x: Tensor, *, device: str | torch.device = "cpu", batch: int = 1024) -> Tensor:
    """``(N, D)`` float32 pooled pre-logit features (the frozen [CLS]) of uint8 images ``x``, on CPU."""
    model.eval()
    device = torch.device(device)
    out = []
    for k in range(0, len(x), batch):
        feats = model.forward_features(_normalize(x[k:k + batch].to(device)))
        out.append(model.forward_head(feats, pre_logits=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
