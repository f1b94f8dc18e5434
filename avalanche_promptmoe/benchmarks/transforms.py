"""Input transforms of the published prompt-CL protocols (HiDe-Prompt / NoRGa / Hash), and the assembly
of a class-incremental Avalanche benchmark shared by the CIFAR-100, CUB-200 and ImageNet-R builders.

Transforms (METHODS.md §3.5 and §7, checked against HiDe-Prompt's ``datasets.py``:
``build_cifar_transform`` and ``build_transform``):

* CIFAR — train: ``RandomResizedCrop(S, bicubic)`` (default scale (0.08, 1)) + ``RandomHorizontalFlip``
  + ``ColorJitter(brightness=63/255)`` + ``ToTensor`` (+ ``Normalize``); eval: ``Resize(R, bicubic)`` +
  ``CenterCrop(S)`` + ``ToTensor`` (+ ``Normalize``). METHODS.md §7 writes the eval resize without an
  interpolation; HiDe's code passes ``interpolation=3`` (bicubic), which we follow.
* CUB-200 and ImageNet-R — train: ``RandomResizedCrop(S, scale=(0.05, 1), ratio=(3/4, 4/3))`` (bilinear,
  torchvision's default, as in HiDe) + ``RandomHorizontalFlip`` + ``ToTensor``; eval:
  ``Resize(R, bicubic)`` + ``CenterCrop(S)`` + ``ToTensor``.

SMoPE's pipeline (``pipeline="smope"``; SMoPE-repo ``dataloaders/utils.py: get_transform``): train
``RandomResizedCrop(S)`` (torchvision defaults: scale (0.08, 1), bilinear) + ``RandomHorizontalFlip`` +
``ToTensor``; eval CIFAR ``Resize(S)`` (bilinear), CUB / ImageNet-R ``Resize(R)`` + ``CenterCrop(S)``
(bilinear); its ``Normalize`` is mean 0, std 1, i.e. none (pass ``normalize="none"``).

Class orders (:func:`class_order_for`): ``"numpy"`` (``RandomState(seed).permutation``, ``seed=None``:
natural), ``"natural"`` (0..n−1 whatever the seed: HiDe-Prompt's ``--shuffle False``; its seeds 42 /
40 / 44 then only seed training) and ``"python"`` (``random.seed(seed); random.shuffle(order)``:
SMoPE / CODA ``trainer.py`` with ``rand_split: True``).

``S = img_size`` (224 in every paper) and ``R = int(S / 0.875)`` (256 for 224, HiDe's ``256/224``
ratio). Normalization presets (:data:`NORMALIZATIONS`):

* ``"none"`` — [0, 1] tensors, no ``Normalize``: what HiDe / NoRGa / Hash feed the ViT for CUB and
  ImageNet-R (the published numbers were obtained this way); default for those two datasets.
* ``"cifar"`` — CIFAR-100 mean (0.5071, 0.4867, 0.4408), std (0.2675, 0.2565, 0.2761): HiDe's CIFAR
  transform; default for CIFAR-100.
* ``"timm"`` — mean = std = (0.5, 0.5, 0.5): the pretrained config of timm's ViT-B/16
  ``orig_in21k`` / ``augreg_*`` weights (``IMAGENET_INCEPTION_MEAN/STD``), i.e. what the backbone saw
  in pre-training.
* an explicit ``(mean, std)`` pair of 3-sequences.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from avalanche_promptmoe.benchmarks.errors import check_n_experiences

logger = logging.getLogger(__name__)

__all__ = [
    "NORMALIZATIONS",
    "NormalizeSpec",
    "build_transforms",
    "resolve_normalization",
    "class_order_from_seed",
    "class_order_for",
    "CLASS_ORDERS",
    "PIPELINES",
]

#: Class-order rules of the builders' ``class_order`` option (module docstring).
CLASS_ORDERS = ("numpy", "natural", "python")
ClassOrderRule = Literal["numpy", "natural", "python"]
#: Input pipelines of the builders' ``pipeline`` option: HiDe-Prompt's or SMoPE's.
PIPELINES = ("hide", "smope")
Pipeline = Literal["hide", "smope"]

#: Named normalization presets: name -> (mean, std), or ``None`` for no ``Normalize``.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]] | None] = {
    "none": None,
    "cifar": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "timm": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

NormalizeSpec = str | tuple[Sequence[float], Sequence[float]] | None

_KIND_ALIASES = {
    "cifar": "cifar",
    "cifar100": "cifar",
    "cifar-100": "cifar",
    "cub": "cub",
    "cub200": "cub",
    "cub-200": "cub",
    "imagenet_r": "imagenet_r",
    "imagenet-r": "imagenet_r",
    "imagenetr": "imagenet_r",
}
_DEFAULT_NORMALIZE = {"cifar": "cifar", "cub": "none", "imagenet_r": "none"}


def resolve_normalization(
    normalize: NormalizeSpec,
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """Turn a normalization spec into ``(mean, std)``, or ``None`` for no normalization.

    Args:
        normalize: ``"none"`` (or ``None``), ``"cifar"``, ``"timm"`` (see :data:`NORMALIZATIONS`), or an
            explicit ``(mean, std)`` pair of 3 floats each.

    Raises:
        ValueError: unknown name, wrong lengths, or a non-positive std.
    """
    if normalize is None:
        return None
    if isinstance(normalize, str):
        key = normalize.lower()
        if key not in NORMALIZATIONS:
            raise ValueError(
                f"normalize must be one of {sorted(NORMALIZATIONS)} or a (mean, std) pair, got {normalize!r}"
            )
        return NORMALIZATIONS[key]
    try:
        mean, std = normalize
        mean_t = tuple(float(m) for m in mean)
        std_t = tuple(float(s) for s in std)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"normalize must be a preset name or a (mean, std) pair, got {normalize!r}") from exc
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(f"normalize (mean, std) must have 3 values each, got {normalize!r}")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"normalize std must be positive, got {std_t}")
    return mean_t, std_t  # type: ignore[return-value]


def _describe_normalize(normalize: NormalizeSpec) -> Any:
    """A JSON-friendly form of a normalization spec (for ``benchmark.protocol``)."""
    if normalize is None or isinstance(normalize, str):
        return normalize
    return [list(map(float, v)) for v in normalize]


def build_transforms(
    kind: str, img_size: int = 224, normalize: NormalizeSpec | str = "default", pipeline: Pipeline = "hide"
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """Build the (train, eval) torchvision transforms of a protocol (see the module docstring).

    Args:
        kind: ``"cifar"`` (CIFAR-100), ``"cub"`` (CUB-200) or ``"imagenet_r"`` (aliases:
            ``cifar100``, ``cub200``, ``imagenet-r``).
        img_size: output side ``S``; the eval resize is ``int(S / 0.875)`` (256 for 224).
        normalize: ``"default"`` = ``"cifar"`` for CIFAR and ``"none"`` for CUB / ImageNet-R (HiDe), or
            any spec accepted by :func:`resolve_normalization`.
        pipeline: ``"hide"`` (HiDe-Prompt's ``build_cifar_transform`` / ``build_transform``) or
            ``"smope"`` (SMoPE's ``get_transform``; see the module docstring).

    Returns:
        ``(train_transform, eval_transform)``, each PIL image -> float32 CHW tensor of ``S x S``.

    Raises:
        ValueError: unknown ``kind``, bad ``img_size`` or ``normalize``.
    """
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    family = _KIND_ALIASES.get(str(kind).lower())
    if family is None:
        raise ValueError(f"kind must be one of 'cifar', 'cub', 'imagenet_r', got {kind!r}")
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    size = int(img_size)
    resize = int(size / 0.875)
    if isinstance(normalize, str) and normalize == "default":
        normalize = _DEFAULT_NORMALIZE[family]
    norm = resolve_normalization(normalize)
    tail: list[Any] = [T.ToTensor()]
    if norm is not None:
        tail.append(T.Normalize(mean=norm[0], std=norm[1]))

    if pipeline == "smope":
        train = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        evaluation = [T.Resize(size)] if family == "cifar" else [T.Resize(resize), T.CenterCrop(size)]
        return T.Compose(train + tail), T.Compose(evaluation + list(tail))
    if family == "cifar":
        train = [
            T.RandomResizedCrop(size, interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=63 / 255),
        ]
    else:
        train = [
            T.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)),
            T.RandomHorizontalFlip(),
        ]
    evaluation = [T.Resize(resize, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size)]
    return T.Compose(train + tail), T.Compose(evaluation + list(tail))


# ------------------------------------------------------------------------- benchmark assembly (shared)


def class_order_from_seed(n_classes: int, seed: int | None) -> list[int]:
    """Class order of the builders: ``numpy.random.RandomState(seed).permutation(n)``; ``None`` = natural.

    ``None`` gives ``0 .. n-1`` (HiDe-Prompt's default, ``shuffle=False``). A local ``RandomState`` is
    used, so neither the global numpy nor the global torch RNG is touched.
    """
    if seed is None:
        return list(range(n_classes))
    return np.random.RandomState(seed).permutation(n_classes).tolist()


def class_order_for(n_classes: int, seed: int | None, rule: ClassOrderRule = "numpy") -> list[int]:
    """The class order under ``rule`` (module docstring): ``"numpy"`` = :func:`class_order_from_seed`,
    ``"natural"`` = ``0..n-1``, ``"python"`` = ``random.Random(seed).shuffle(list(range(n)))`` (equal to
    ``random.seed(seed); random.shuffle(...)``, without touching the global ``random`` state)."""
    if rule == "numpy":
        return class_order_from_seed(n_classes, seed)
    if rule == "natural":
        return list(range(n_classes))
    if rule == "python":
        if seed is None:
            raise ValueError("class_order='python' needs an int seed (random.seed(seed); random.shuffle)")
        order = list(range(n_classes))
        random.Random(seed).shuffle(order)
        return order
    raise ValueError(f"class_order must be one of {CLASS_ORDERS}, got {rule!r}")


def _class_incremental(
    train_ds: Any,
    test_ds: Any,
    *,
    n_classes: int,
    n_experiences: int,
    seed: int | None,
    train_transform: Callable[[Any], Any],
    eval_transform: Callable[[Any], Any],
    name: str,
    root: Any,
    normalize: NormalizeSpec | str,
    img_size: int,
    details: Mapping[str, Any] | None = None,
    log_note: str = "",
    class_order: ClassOrderRule = "numpy",
    pipeline: Pipeline = "hide",
) -> Any:
    """Wrap two datasets with ``.targets`` (labels ``0..n_classes-1``) into a class-incremental CLScenario.

    Shared by the dataset builders. The class order is passed explicitly (never ``seed=``), because
    Avalanche's generators reseed the *global* torch RNG when given a seed (ECOSYSTEM.md §A4.4).
    Sets ``bm.class_order`` and ``bm.protocol`` (what every builder records, then the builder's own
    ``details``) and logs one line (``log_note`` appended inside its parentheses).
    """
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset
    from avalanche.benchmarks.utils.transform_groups import TransformGroups

    n_experiences = check_n_experiences(n_experiences, n_classes)
    for name, ds in (("train", train_ds), ("test", test_ds)):
        found = set(int(t) for t in ds.targets)
        if found != set(range(n_classes)):
            missing = sorted(set(range(n_classes)) - found)[:5]
            raise ValueError(
                f"the {name} split must hold every label 0..{n_classes - 1}; missing e.g. {missing}"
            )
    groups = TransformGroups({"train": train_transform, "eval": eval_transform})
    rule = class_order
    class_order = class_order_for(n_classes, seed, rule)
    bm = class_incremental_benchmark(
        {
            "train": as_classification_dataset(train_ds, transform_groups=groups),
            "test": as_classification_dataset(test_ds, transform_groups=groups),
        },
        class_order=class_order,
        num_experiences=n_experiences,
    )
    bm.class_order = class_order
    bm.protocol = {
        "benchmark": name,
        "root": str(root),
        "n_experiences": int(n_experiences),
        "n_classes": n_classes,
        "seed": seed,
        "class_order_rule": rule,
        "pipeline": pipeline,
        "normalize": _describe_normalize(normalize),
        "img_size": int(img_size),
        "n_train": len(train_ds),
        "n_test": len(test_ds),
        **dict(details or {}),
        "train_transform": repr(train_transform),
        "eval_transform": repr(eval_transform),
    }
    logger.info(
        "%s: %d train / %d test images, %d classes in %d experiences (seed %s%s)",
        name, len(train_ds), len(test_ds), n_classes, n_experiences, seed, f", {log_note}" if log_note else "",
    )
    return bm
