"""Split ImageNet-R (10 x 20 classes) as an Avalanche benchmark, with a computed, checksummed 80/20 split.

ImageNet-R has no official train/test split; HiDe-Prompt & co. ``random_split`` once and move the files,
CODA-Prompt ships file lists. We compute the split (DECISIONS.md §H), deterministically from the file
tree and ``split_seed``, and expose the sha256 of the resulting file list so every run can log it:

* classes: the ``n`` + 8 digit sub-folders (wnids) of ``imagenet-r/``, sorted; label = index.
* per class, in sorted-wnid order: the class's image names (``.jpg`` / ``.jpeg`` / ``.png``, any case)
  sorted by plain string order as ``<wnid>/<name>``; one ``numpy.random.RandomState(split_seed)``,
  created once and drawn from class after class, gives ``perm = rng.permutation(n)``; the first
  ``floor(0.8 * n)`` (``n * 4 // 5``, rounded **down**) of ``perm`` are train, the rest test. Every
  class therefore keeps at least one test image (and, with ``n >= 2``, one train image).
* canonical text: for the sorted train list, then the sorted test list, one line
  ``"<split>\\t<wnid>/<name>\\n"`` (``split`` = ``train`` / ``test``), UTF-8; ``split_sha256`` is its
  sha256.

Data: https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar (30,000 images, 200 classes),
extracted so that ``imagenet-r/<wnid>/*.jpg``. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from avalanche_promptmoe.benchmarks.errors import DatasetNotFoundError
from avalanche_promptmoe.benchmarks.image_files import ImagePathsDataset, verify_image_datasets
from avalanche_promptmoe.benchmarks.smope_splits import SMOPE_SPLITS_COMMIT, read_smope_split, smope_split_dir
from avalanche_promptmoe.benchmarks.transforms import (
    ClassOrderRule,
    NormalizeSpec,
    Pipeline,
    _class_incremental,
    build_transforms,
)

logger = logging.getLogger(__name__)

__all__ = ["IMAGENET_R_URL", "imagenet_r_split", "split_imagenet_r"]

IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
_FOLDER = "imagenet-r"
_WNID_RE = re.compile(r"^n\d{8}$")
_IMG_EXT = (".jpg", ".jpeg", ".png")
_N_CLASSES = 200
_TRAIN_NUM, _TRAIN_DEN = 4, 5  # 80 % train, rounded down per class


def _inr_help(where: Path) -> str:
    return (
        f"download {IMAGENET_R_URL} and extract it in {where} (`tar -xf imagenet-r.tar -C {where}`), "
        f"so that {where / _FOLDER}/<wnid>/*.jpg exists (200 wnid folders)"
    )


def _wnid_dirs(path: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and _WNID_RE.match(e.name))
    except OSError:
        return []


def _resolve_root(root: str | os.PathLike) -> tuple[Path, list[str]]:
    """The ``imagenet-r`` folder (``root/imagenet-r`` or ``root`` itself) and its sorted wnids."""
    path = Path(root).expanduser()
    for base in (path / _FOLDER, path):
        wnids = _wnid_dirs(base)
        if wnids:
            return base, wnids
    parent = path.parent if path.name == _FOLDER else path
    raise DatasetNotFoundError(
        f"ImageNet-R not found: no <wnid>/ image folders in {path / _FOLDER} or {path}; {_inr_help(parent)}"
    )


def _canonical_text(train: Sequence[str], test: Sequence[str]) -> str:
    return "".join(f"train\t{p}\n" for p in train) + "".join(f"test\t{p}\n" for p in test)


def _split(root: str | os.PathLike, split_seed: int) -> tuple[Path, list[str], list[str], list[str]]:
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise ValueError(f"split_seed must be a non-negative int, got {split_seed!r}")
    base, wnids = _resolve_root(root)
    rng = np.random.RandomState(int(split_seed))
    train: list[str] = []
    test: list[str] = []
    for wnid in wnids:
        names = sorted(
            e.name for e in os.scandir(base / wnid) if e.is_file() and e.name.lower().endswith(_IMG_EXT)
        )
        if len(names) < 2:
            raise DatasetNotFoundError(
                f"ImageNet-R class folder {base / wnid} holds {len(names)} image(s), need at least 2 for "
                f"a train/test split: the extraction looks incomplete; {_inr_help(base.parent)}"
            )
        files = [f"{wnid}/{name}" for name in names]
        perm = rng.permutation(len(files))
        n_train = len(files) * _TRAIN_NUM // _TRAIN_DEN
        train += [files[i] for i in perm[:n_train]]
        test += [files[i] for i in perm[n_train:]]
    return base, wnids, sorted(train), sorted(test)


def _smope_split(
    root: str | os.PathLike, split_dir: str | os.PathLike | None
) -> tuple[Path, list[str], list[str], dict[str, int]]:
    """SMoPE's official lists (``smope_splits``): base folder, train and test paths, wnid → label."""
    base, _ = _resolve_root(root)
    folder = smope_split_dir(split_dir)
    train, train_y = read_smope_split(folder, "imagenet-r_train.yaml")
    test, test_y = read_smope_split(folder, "imagenet-r_test.yaml")
    label_of: dict[str, int] = {}
    for path, label in zip(train + test, train_y + test_y):
        if label_of.setdefault(path.split("/", 1)[0], label) != label:
            raise DatasetNotFoundError(f"{folder}: class {path.split('/', 1)[0]} has two labels in the split lists")
    missing = [p for p in train + test if not (base / p).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"ImageNet-R in {base} lacks {len(missing)} image(s) of SMoPE's split lists (e.g. {missing[:3]}); "
            f"{_inr_help(base.parent)}"
        )
    return base, train, test, label_of


def imagenet_r_split(root: str | os.PathLike, split_seed: int = 0) -> tuple[list[str], list[str], str]:
    """Compute the seeded per-class 80/20 ImageNet-R split (rule in the module docstring).

    Args:
        root: the folder holding ``imagenet-r/`` (or ``imagenet-r`` itself).
        split_seed: seed of the per-class permutations.

    Returns:
        ``(train_list, test_list, sha256)``: sorted relative paths ``"<wnid>/<file>"`` and the sha256
        (hex) of their canonical text; log it with each run.

    Raises:
        DatasetNotFoundError: no wnid folders, or a class with fewer than 2 images.
        ValueError: ``split_seed`` is not a non-negative int.
    """
    _, _, train, test = _split(root, split_seed)
    return train, test, hashlib.sha256(_canonical_text(train, test).encode("utf-8")).hexdigest()


def split_imagenet_r(
    root: str | os.PathLike,
    n_experiences: int = 10,
    seed: int | None = 0,
    split_seed: int = 0,
    normalize: NormalizeSpec = "none",
    img_size: int = 224,
    train_transform: Callable[[Any], Any] | None = None,
    eval_transform: Callable[[Any], Any] | None = None,
    verify: bool = False,
    class_order: ClassOrderRule = "numpy",
    pipeline: Pipeline = "hide",
    split: Literal["seeded", "smope"] = "seeded",
    split_dir: str | os.PathLike | None = None,
) -> Any:
    """Class-incremental Split ImageNet-R on the computed 80/20 split (:func:`imagenet_r_split`) or,
    with ``split="smope"``, on SMoPE's official split lists and labels (``smope_splits``).

    Built with Avalanche's ``class_incremental_benchmark`` (streams ``train`` / ``test``, samples
    ``(x, y)``, no task labels; label = index of the wnid in sorted order, not remapped). The class
    order is ``numpy.random.RandomState(seed).permutation(n_classes)`` (``seed=None``: natural order),
    passed as ``class_order``, so the global torch RNG is left untouched. Images are opened lazily.

    Args:
        root: the folder holding ``imagenet-r/`` (or that folder itself).
        n_experiences: number of experiences; must divide the class count (200 -> 10 x 20).
        seed: seed of the class order; ``None`` = natural order.
        split_seed: seed of the train/test split (independent of ``seed``).
        normalize: ``"none"`` (HiDe's ImageNet-R protocol, default), ``"timm"``, ``"cifar"`` or
            ``(mean, std)``.
        img_size: output side (224 in the papers).
        train_transform: replaces the built train transform (PIL image -> tensor).
        eval_transform: replaces the built eval transform.
        verify: decode every image once before returning (threads, progress bar) and raise
            :class:`CorruptImageError` listing the bad files; without it a bad file is named when first read.
        class_order: ``"numpy"`` (the order above), ``"natural"`` (0..n-1 for any seed: HiDe-Prompt) or
            ``"python"`` (``random.seed(seed); random.shuffle``: SMoPE); see ``transforms.class_order_for``.
        pipeline: ``"hide"`` (HiDe-Prompt's transforms) or ``"smope"`` (SMoPE's ``get_transform``).
        split: ``"seeded"`` (ours, ``split_seed``) or ``"smope"``: SMoPE's official lists (24,000 /
            6,000 images) with their labels, checked by sha256 (SMoPE's official recipe;
            ``split_seed`` unused).
        split_dir: where the SMoPE lists are (default: the search order of
            ``smope_splits.smope_split_dir``).

    Returns:
        An Avalanche ``CLScenario`` with ``train_stream`` / ``test_stream``, ``class_order`` and
        ``protocol`` (arguments, sizes, ``wnids`` and ``split_sha256``).

    Raises:
        CorruptImageError: ``verify=True`` found files that cannot be decoded.
        DatasetNotFoundError: the dataset is missing or a class folder is (nearly) empty.
        ValueError: ``n_experiences`` is not a positive divisor of the class count.
    """
    if split == "smope":
        base, train, test, label_of = _smope_split(root, split_dir)
        wnids = sorted(label_of, key=label_of.__getitem__)
        rule = f"SMoPE's official lists and labels (dataloaders/splits @ {SMOPE_SPLITS_COMMIT[:8]})"
    elif split == "seeded":
        base, wnids, train, test = _split(root, split_seed)
        label_of = {w: i for i, w in enumerate(wnids)}
        rule = "per class: RandomState(split_seed) permutation of sorted paths, floor(80%) train"
    else:
        raise ValueError(f"split: expected 'seeded' or 'smope', got {split!r}")
    sha = hashlib.sha256(_canonical_text(sorted(train), sorted(test)).encode("utf-8")).hexdigest()
    n_classes = len(wnids)
    if n_classes != _N_CLASSES:
        logger.warning(
            "ImageNet-R in %s has %d classes, not 200: not the published protocol", base, n_classes
        )
    tf_train, tf_eval = build_transforms("imagenet_r", img_size=img_size, normalize=normalize, pipeline=pipeline)
    tf_train = train_transform or tf_train
    tf_eval = eval_transform or tf_eval
    train_ds = ImagePathsDataset(base, train, [label_of[p.split("/", 1)[0]] for p in train])
    test_ds = ImagePathsDataset(base, test, [label_of[p.split("/", 1)[0]] for p in test])
    for ds in (train_ds, test_ds):
        ds.classes = list(wnids)
    if verify:
        verify_image_datasets((train_ds, test_ds), "ImageNet-R")
    bm = _class_incremental(
        train_ds, test_ds, n_classes=n_classes, n_experiences=n_experiences, seed=seed,
        train_transform=tf_train, eval_transform=tf_eval, name="split_imagenet_r", root=base,
        normalize=normalize, img_size=img_size, class_order=class_order, pipeline=pipeline, log_note=f"split sha256 {sha[:12]}",
        details={
            "split": split,
            "split_seed": int(split_seed),
            "split_rule": rule,
            "split_sha256": sha,
            "wnids": list(wnids),
        },
    )
    return bm
