"""Benchmarks: the builders of Split CIFAR-100, CUB-200 and ImageNet-R (Avalanche and torchvision are
imported inside the builders). The offline kit (Split Tiny-ImageNet-32, the reference ViT) lives in
:mod:`avalanche_promptmoe.kit`; its public names are re-exported here lazily (on first use), so that
importing ``benchmarks`` does not import the engine."""

from avalanche_promptmoe._lazy import lazy_exports
from avalanche_promptmoe.benchmarks.cifar100 import CIFAR100_URL, split_cifar100
from avalanche_promptmoe.benchmarks.cub200 import CUB200_URL, load_cub200_lists, split_cub200
from avalanche_promptmoe.benchmarks.errors import DatasetNotFoundError
from avalanche_promptmoe.benchmarks.image_files import (
    CorruptImageError,
    ImagePathsDataset,
    verify_image_datasets,
)
from avalanche_promptmoe.benchmarks.imagenet_r import IMAGENET_R_URL, imagenet_r_split, split_imagenet_r
from avalanche_promptmoe.benchmarks.transforms import NORMALIZATIONS, build_transforms, class_order_from_seed

_KIT_NAMES = (
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
)
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(_KIT_NAMES, "avalanche_promptmoe.kit"), globals())

__all__ = [
    "CIFAR100_URL",
    "CUB200_URL",
    "CorruptImageError",
    "DatasetNotFoundError",
    "IMAGENET_R_URL",
    "ImagePathsDataset",
    "NORMALIZATIONS",
    "build_transforms",
    "class_order_from_seed",
    "imagenet_r_split",
    "load_cub200_lists",
    "split_cifar100",
    "split_cub200",
    "split_imagenet_r",
    "verify_image_datasets",
    *_KIT_NAMES,
]
