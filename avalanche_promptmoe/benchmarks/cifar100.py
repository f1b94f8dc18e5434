"""Split CIFAR-100 (10 x 10 classes) as an Avalanche benchmark, read offline from torchvision's layout.

Data: torchvision's ``CIFAR100(root, download=False)``, i.e. the python pickles
``<root>/cifar-100-python/{train,test,meta}`` extracted from
https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avalanche_promptmoe.benchmarks.errors import DatasetNotFoundError
from avalanche_promptmoe.benchmarks.transforms import (
    ClassOrderRule,
    NormalizeSpec,
    Pipeline,
    _class_incremental,
    build_transforms,
)

logger = logging.getLogger(__name__)

__all__ = ["CIFAR100_URL", "split_cifar100"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_FOLDER = "cifar-100-python"
_FILES = ("train", "test", "meta")
_N_CLASSES = 100


def _cifar_help(root: Path) -> str:
    return (
        f"download {CIFAR100_URL} and extract it in {root} so that {root / _FOLDER}/ holds "
        f"{', '.join(_FILES)} (e.g. `tar -xzf cifar-100-python.tar.gz -C {root}`)"
    )


def _resolve_root(root: str | os.PathLike) -> Path:
    """The folder that contains ``cifar-100-python/`` (``root`` itself or, if given that folder, its parent)."""
    path = Path(root).expanduser()
    if path.name == _FOLDER and not (path / _FOLDER).is_dir():
        path = path.parent
    missing = [f for f in _FILES if not (path / _FOLDER / f).is_file()]
    if missing:
        where = path / _FOLDER
        raise DatasetNotFoundError(
            f"CIFAR-100 not found: {where} lacks {', '.join(missing)}; {_cifar_help(path)}"
        )
    return path


def _load(root: Path, train: bool, check_integrity: bool) -> Any:
    from torchvision.datasets import CIFAR100

    cls = CIFAR100 if check_integrity else __getattr__("_CIFAR100NoMD5")
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError as exc:  # torchvision: "not found or corrupted" (md5 mismatch)
        raise DatasetNotFoundError(
            f"CIFAR-100 in {root / _FOLDER} failed torchvision's md5 check ({exc}); re-extract "
            f"{CIFAR100_URL}, or pass check_integrity=False for a re-encoded copy. {_cifar_help(root)}"
        ) from exc
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise DatasetNotFoundError(
            f"cannot read CIFAR-100 from {root / _FOLDER}: {exc!r}; {_cifar_help(root)}"
        ) from exc


def _no_md5_subclass() -> type:
    from torchvision.datasets import CIFAR100

    class CIFAR100NoMD5(CIFAR100):
        """torchvision's CIFAR100 with the md5 checks off: a ``None`` md5 makes ``check_integrity``
        test only that the file exists."""

        train_list = [[name, None] for name, _ in CIFAR100.train_list]
        test_list = [[name, None] for name, _ in CIFAR100.test_list]
        meta = {**CIFAR100.meta, "md5": None}

    CIFAR100NoMD5.__module__ = __name__
    CIFAR100NoMD5.__qualname__ = "_CIFAR100NoMD5"
    return CIFAR100NoMD5


def __getattr__(name: str) -> Any:
    """Build the torchvision subclass on first use (importing torchvision costs ~1 s); being a module
    attribute keeps it picklable for DataLoader workers."""
    if name == "_CIFAR100NoMD5":
        cls = globals().get(name) or _no_md5_subclass()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def split_cifar100(
    root: str | os.PathLike,
    n_experiences: int = 10,
    seed: int | None = 0,
    normalize: NormalizeSpec = "cifar",
    img_size: int = 224,
    train_transform: Callable[[Any], Any] | None = None,
    eval_transform: Callable[[Any], Any] | None = None,
    class_order: ClassOrderRule = "numpy",
    pipeline: Pipeline = "hide",
    check_integrity: bool = True,
) -> Any:
    """Class-incremental Split CIFAR-100 with the HiDe-Prompt transforms.

    Built with Avalanche's ``class_incremental_benchmark`` (streams ``train`` / ``test``, samples
    ``(x, y)``, no task labels, labels = CIFAR fine labels, not remapped). The class order is
    ``numpy.random.RandomState(seed).permutation(100)`` (``seed=None``: natural order 0..99, as
    HiDe-Prompt), passed as ``class_order``, so the global torch RNG is left untouched.

    Args:
        root: the folder holding ``cifar-100-python/`` (or that folder itself).
        n_experiences: number of experiences; must divide the number of classes (100).
        seed: seed of the class order; ``None`` = natural order.
        normalize: ``"cifar"`` (HiDe's CIFAR mean/std, default), ``"timm"``, ``"none"`` or ``(mean, std)``;
            see :mod:`avalanche_promptmoe.benchmarks.transforms`.
        img_size: output side (224 in the papers).
        train_transform: replaces the built train transform (PIL image -> tensor).
        eval_transform: replaces the built eval transform.
        class_order: ``"numpy"`` (the order above), ``"natural"`` (0..n-1 for any seed: HiDe-Prompt) or
            ``"python"`` (``random.seed(seed); random.shuffle``: SMoPE); see ``transforms.class_order_for``.
        pipeline: ``"hide"`` (HiDe-Prompt's transforms) or ``"smope"`` (SMoPE's ``get_transform``).
        check_integrity: verify torchvision's md5 of the three pickles (the official archive).
            ``False`` only checks that they exist: for re-encoded copies and the tests' synthetic
            pickles, which cannot match the official checksums.

    Returns:
        An Avalanche ``CLScenario`` with ``train_stream`` / ``test_stream``, ``class_order`` (list of
        int) and ``protocol`` (the arguments and sizes, for logging).

    Raises:
        DatasetNotFoundError: the pickles are missing, unreadable or fail the md5 check.
        ValueError: ``n_experiences`` is not a positive divisor of the class count, or bad transform args.
    """
    base = _resolve_root(root)
    tf_train, tf_eval = build_transforms("cifar", img_size=img_size, normalize=normalize, pipeline=pipeline)
    tf_train = train_transform or tf_train
    tf_eval = eval_transform or tf_eval
    train_ds = _load(base, True, check_integrity)
    test_ds = _load(base, False, check_integrity)
    n_classes = len(set(train_ds.targets))
    if n_classes != _N_CLASSES:
        logger.warning("CIFAR-100 in %s has %d classes, not 100: not the published protocol", base, n_classes)
    bm = _class_incremental(
        train_ds, test_ds, n_classes=n_classes, n_experiences=n_experiences, seed=seed,
        train_transform=tf_train, eval_transform=tf_eval, name="split_cifar100", root=base,
        normalize=normalize, img_size=img_size, class_order=class_order, pipeline=pipeline, details={"check_integrity": bool(check_integrity)},
    )
    return bm
