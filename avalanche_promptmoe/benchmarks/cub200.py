"""Split CUB-200-2011 (10 x 20 classes) on FULL images, as an Avalanche benchmark.

Unlike Avalanche's ``CUB200`` (which crops every image to its bird bounding box before the
transform, ECOSYSTEM.md §A4.2), this reads the whole image, as HiDe-Prompt, PILOT and Mammoth do;
``bounding_boxes.txt`` is ignored. The official train/test split (``train_test_split.txt``) is used.

Data: ``CUB_200_2011.tgz`` from https://data.caltech.edu/records/65de6-vp158, extracted so that
``CUB_200_2011/`` holds ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` and
``images/<NNN.Name>/*.jpg``. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avalanche_promptmoe.benchmarks.errors import DatasetNotFoundError
from avalanche_promptmoe.benchmarks.image_files import ImagePathsDataset, verify_image_datasets
from avalanche_promptmoe.benchmarks.transforms import (
    ClassOrderRule,
    NormalizeSpec,
    Pipeline,
    _class_incremental,
    build_transforms,
)

logger = logging.getLogger(__name__)

__all__ = ["CUB200_URL", "ImagePathsDataset", "load_cub200_lists", "split_cub200"]

CUB200_URL = "https://data.caltech.edu/records/65de6-vp158"
_FOLDER = "CUB_200_2011"
_META_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
_N_CLASSES = 200


def _cub_help(where: Path) -> str:
    return (
        f"download CUB_200_2011.tgz from {CUB200_URL} and extract it in {where} (`tar -xzf "
        f"CUB_200_2011.tgz -C {where}`), so that {where / _FOLDER}/ holds {', '.join(_META_FILES)} "
        f"and images/<NNN.Name>/*.jpg"
    )


def _resolve_root(root: str | os.PathLike) -> Path:
    """The ``CUB_200_2011`` folder: ``root/CUB_200_2011`` or ``root`` itself."""
    path = Path(root).expanduser()
    for base in (path / _FOLDER, path):
        if (base / "images.txt").is_file():
            missing = [f for f in _META_FILES if not (base / f).is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"CUB-200-2011 incomplete: {base} lacks {', '.join(missing)}; {_cub_help(base.parent)}"
                )
            return base
    parent = path.parent if path.name == _FOLDER else path
    raise DatasetNotFoundError(
        f"CUB-200-2011 not found: no {_FOLDER}/images.txt under {path}; {_cub_help(parent)}"
    )


def _read_pairs(path: Path) -> dict[int, str]:
    """``<image id> <value>`` lines -> {id: value}."""
    out: dict[int, str] = {}
    try:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            key, _, value = line.strip().partition(" ")
            out[int(key)] = value.strip()
            if not out[int(key)]:
                raise ValueError(f"line {n} has no value")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetNotFoundError(f"cannot parse {path}: {exc}") from exc
    return out


def load_cub200_lists(root: str | os.PathLike) -> dict[str, Any]:
    """Read the official CUB-200-2011 metadata: image paths, labels and train/test split.

    Images are ordered by image id. Labels are the class id (``image_class_labels.txt``) minus 1.

    Args:
        root: the folder holding ``CUB_200_2011/`` (or ``CUB_200_2011`` itself).

    Returns:
        ``base`` (the ``CUB_200_2011`` folder), ``train`` / ``test``: ``(paths, labels)`` with paths
        relative to ``base / "images"``, ``n_classes``, and ``classes`` (names from ``classes.txt`` if
        present, else the image folder names).

    Raises:
        DatasetNotFoundError: files missing, unparsable, inconsistent, or images absent on disk.
    """
    base = _resolve_root(root)
    images = _read_pairs(base / "images.txt")
    labels = _read_pairs(base / "image_class_labels.txt")
    split = _read_pairs(base / "train_test_split.txt")
    ids = sorted(images)
    bad = [i for i in ids if i not in labels or split.get(i) not in ("0", "1")]
    if bad:
        raise DatasetNotFoundError(
            f"{base}: {len(bad)} images (e.g. id {bad[0]}) lack a class label or a 0/1 train flag in "
            f"image_class_labels.txt / train_test_split.txt; {_cub_help(base.parent)}"
        )
    try:
        label_of = {i: int(labels[i]) - 1 for i in ids}
    except ValueError as exc:
        raise DatasetNotFoundError(
            f"{base / 'image_class_labels.txt'}: non-integer class id ({exc})"
        ) from exc
    n_classes = len(set(label_of.values()))
    if set(label_of.values()) != set(range(n_classes)):
        raise DatasetNotFoundError(
            f"{base}: the {n_classes} class ids in image_class_labels.txt must be 1..{n_classes} without gaps"
        )
    img_dir = base / "images"
    missing = [images[i] for i in ids if not (img_dir / images[i]).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(ids)} images listed in images.txt are missing under {img_dir} "
            f"(e.g. {missing[0]}); {_cub_help(base.parent)}"
        )
    out: dict[str, Any] = {"base": base, "n_classes": n_classes}
    for name, flag in (("train", "1"), ("test", "0")):
        sel = [i for i in ids if split[i] == flag]
        out[name] = ([images[i] for i in sel], [label_of[i] for i in sel])
    names: dict[int, str] = {}
    if (base / "classes.txt").is_file():
        names = {k - 1: v for k, v in _read_pairs(base / "classes.txt").items()}
    for i in ids:
        names.setdefault(label_of[i], images[i].split("/")[0])
    out["classes"] = [names[c] for c in range(n_classes)]
    return out


def split_cub200(
    root: str | os.PathLike,
    n_experiences: int = 10,
    seed: int | None = 0,
    normalize: NormalizeSpec = "none",
    img_size: int = 224,
    train_transform: Callable[[Any], Any] | None = None,
    eval_transform: Callable[[Any], Any] | None = None,
    verify: bool = False,
    class_order: ClassOrderRule = "numpy",
    pipeline: Pipeline = "hide",
) -> Any:
    """Class-incremental Split CUB-200 on full (uncropped) images, official train/test split.

    Built with Avalanche's ``class_incremental_benchmark`` (streams ``train`` / ``test``, samples
    ``(x, y)``, no task labels, labels = class id - 1, not remapped). The class order is
    ``numpy.random.RandomState(seed).permutation(n_classes)`` (``seed=None``: natural order, as
    HiDe-Prompt), passed as ``class_order``, so the global torch RNG is left untouched. Images are
    opened lazily from disk (PIL, converted to RGB).

    Args:
        root: the folder holding ``CUB_200_2011/`` (or that folder itself).
        n_experiences: number of experiences; must divide the class count (200 -> 10 x 20).
        seed: seed of the class order; ``None`` = natural order.
        normalize: ``"none"`` (HiDe's CUB protocol, default), ``"timm"``, ``"cifar"`` or ``(mean, std)``.
        img_size: output side (224 in the papers).
        train_transform: replaces the built train transform (PIL image -> tensor).
        eval_transform: replaces the built eval transform.
        verify: decode every image once before returning (threads, progress bar) and raise
            :class:`CorruptImageError` listing the bad files; without it a bad file is named when first read.
        class_order: ``"numpy"`` (the order above), ``"natural"`` (0..n-1 for any seed: HiDe-Prompt) or
            ``"python"`` (``random.seed(seed); random.shuffle``: SMoPE); see ``transforms.class_order_for``.
        pipeline: ``"hide"`` (HiDe-Prompt's transforms) or ``"smope"`` (SMoPE's ``get_transform``).

    Returns:
        An Avalanche ``CLScenario`` with ``train_stream`` / ``test_stream``, ``class_order`` and
        ``protocol`` (arguments, sizes, class names).

    Raises:
        CorruptImageError: ``verify=True`` found files that cannot be decoded.
        DatasetNotFoundError: the dataset is missing or incomplete.
        ValueError: ``n_experiences`` is not a positive divisor of the class count.
    """
    lists = load_cub200_lists(root)
    n_classes = lists["n_classes"]
    if n_classes != _N_CLASSES:
        logger.warning(
            "CUB in %s has %d classes, not 200: not the published protocol", lists["base"], n_classes
        )
    tf_train, tf_eval = build_transforms("cub", img_size=img_size, normalize=normalize, pipeline=pipeline)
    tf_train = train_transform or tf_train
    tf_eval = eval_transform or tf_eval
    img_dir = lists["base"] / "images"
    train_ds = ImagePathsDataset(img_dir, *lists["train"])
    test_ds = ImagePathsDataset(img_dir, *lists["test"])
    for ds in (train_ds, test_ds):
        ds.classes = lists["classes"]
    if verify:
        verify_image_datasets((train_ds, test_ds), "CUB-200")
    bm = _class_incremental(
        train_ds, test_ds, n_classes=n_classes, n_experiences=n_experiences, seed=seed,
        train_transform=tf_train, eval_transform=tf_eval, name="split_cub200", root=lists["base"],
        normalize=normalize, img_size=img_size, class_order=class_order, pipeline=pipeline,
        details={"crop": "full image (bounding boxes ignored)", "classes": lists["classes"]},
    )
    return bm
