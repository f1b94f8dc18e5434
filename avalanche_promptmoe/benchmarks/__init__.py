"""Benchmarks: the offline kit (Split Tiny-ImageNet-32 and the reference ViT). May import Avalanche."""

from avalanche_promptmoe.benchmarks.tinyimagenet32 import (
    CACHE_ENV_VAR,
    KIT_ENV_VAR,
    KIT_V1_SHA256,
    KitError,
    ToModelInput,
    default_cache_dir,
    default_kit_dir,
    kit_checksums,
    load_kit_arrays,
    load_kit_meta,
    load_reference_backbone,
    reference_transform,
    split_tinyimagenet32,
)

__all__ = [
    "CACHE_ENV_VAR",
    "KIT_ENV_VAR",
    "KIT_V1_SHA256",
    "KitError",
    "ToModelInput",
    "default_cache_dir",
    "default_kit_dir",
    "kit_checksums",
    "load_kit_arrays",
    "load_kit_meta",
    "load_reference_backbone",
    "reference_transform",
    "split_tinyimagenet32",
]
