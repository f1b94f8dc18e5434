"""The shared engine: a frozen timm ViT whose attention takes per-sample prefix keys/values.

Imports only torch and timm, so it works where Avalanche and MLflow are absent.
"""

from .backbone import BackboneError, backbone_dims, create_backbone, freeze, is_vision_transformer
from .prefix_attention import Prefix, PrefixAttention, PrefixProvider, unwrap_attention
from .prefix_vit import PrefixViT
from .task_ids import check_task_ids
from .weights import read_weight_file

__all__ = [
    "BackboneError",
    "Prefix",
    "PrefixAttention",
    "PrefixProvider",
    "PrefixViT",
    "backbone_dims",
    "check_task_ids",
    "create_backbone",
    "freeze",
    "is_vision_transformer",
    "read_weight_file",
    "unwrap_attention",
]

from .heads import MASK_VALUE, TaskIdentityHead, mask_logits  # noqa: E402

__all__ += ["MASK_VALUE", "TaskIdentityHead", "mask_logits"]
