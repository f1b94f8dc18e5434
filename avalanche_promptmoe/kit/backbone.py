"""The kit's frozen reference ViT, built from ``reference_vit.json`` through the project's engine."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from avalanche_promptmoe.engine import create_backbone
from avalanche_promptmoe.kit.files import load_kit_meta
from avalanche_promptmoe.kit.locate import KIT_HELP, KIT_WEIGHTS_NAME, KitError, resolve_kit_dir

logger = logging.getLogger(__name__)

__all__ = ["load_reference_backbone"]


def load_reference_backbone(kit_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build the kit's frozen reference ViT from ``reference_vit.json`` (float32, eval mode, no head).

    Args:
        kit_dir: the kit folder; ``None`` = :func:`default_kit_dir`.

    Returns:
        A frozen timm ``VisionTransformer`` (``num_classes=0``: it returns the pooled [CLS] features).

    Raises:
        KitError: the JSON or the weight file is missing.
    """
    kit = resolve_kit_dir(kit_dir)
    meta = load_kit_meta(kit)
    weights = kit / meta.get("weights", KIT_WEIGHTS_NAME)
    if not weights.is_file():
        raise KitError(f"kit file not found: {weights}; {KIT_HELP}")
    model = create_backbone(meta["timm_name"], checkpoint_path=weights, **meta.get("timm_kwargs", {}))
    if any(p.dtype != torch.float32 for p in model.parameters()):
        logger.debug("casting the reference backbone to float32 (weights are %s)", meta.get("weights_dtype"))
        model = model.float()
    return model
