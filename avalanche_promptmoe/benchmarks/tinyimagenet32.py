"""The offline kit: Tiny-ImageNet-32 (downstream half) as an Avalanche benchmark, and the reference ViT.

The kit (``../shared/data`` relative to the project root, see ``docs/DATA.md``) holds
``tinyimagenet32-jpeg.tar.xz`` (Tiny-ImageNet-200 at 32x32), ``reference_vit.pth`` (a small timm ViT
pretrained on the 100 *upstream* classes) and ``reference_vit.json`` (how to rebuild it, the
normalization, and the upstream/downstream class split). The benchmark uses the 100 *downstream*
classes only: label = index of the wnid in the JSON's ``split.downstream_wnids``.

xz cannot seek, so the tar is read once, sequentially, and the decoded uint8 arrays are cached as an
``.npz`` keyed by the tar's sha256 (``~/.cache/avalanche_promptmoe/`` by default, or
``$AVALANCHE_PROMPTMOE_CACHE``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "KIT_ENV_VAR",
    "CACHE_ENV_VAR",
    "KIT_TAR_NAME",
    "KIT_META_NAME",
    "KIT_V1_SHA256",
    "KitError",
    "ToModelInput",
    "default_kit_dir",
    "default_cache_dir",
    "kit_checksums",
    "load_kit_meta",
    "load_kit_arrays",
    "reference_transform",
    "split_tinyimagenet32",
    "load_reference_backbone",
]

KIT_ENV_VAR = "AVALANCHE_PROMPTMOE_KIT"
CACHE_ENV_VAR = "AVALANCHE_PROMPTMOE_CACHE"
KIT_TAR_NAME = "tinyimagenet32-jpeg.tar.xz"
KIT_META_NAME = "reference_vit.json"
KIT_WEIGHTS_NAME = "reference_vit.pth"

#: sha256 of the kit files as shipped (kit v1, ``docs/DATA.md``). CI baselines record these so that a
#: replaced kit reads as "kit changed", not as a regression.
KIT_V1_SHA256: dict[str, str] = {
    KIT_TAR_NAME: "6eb68e73f44a44bba08611717b53f60b4e9609a42e673cdda07ff2e9c102cd39",
    KIT_WEIGHTS_NAME: "7834f24dc88a87e9ea49b719606f4d55312dcf468d02c968235f5f1a08e010a2",
}

_KIT_HELP = (
    f"expected the offline kit (docs/DATA.md): a folder holding {KIT_TAR_NAME}, {KIT_META_NAME} and "
    f"{KIT_WEIGHTS_NAME}; pass its path, or set ${KIT_ENV_VAR}"
)
_CACHE_FORMAT = 1  # bump when the cached arrays' layout or ordering changes
_IMG_SIZE = 32
_TRAIN_RE = re.compile(r"^tin/train/(n\d+)/images/([^/]+\.jpe?g)$", re.IGNORECASE)
_VAL_RE = re.compile(r"^tin/val/images/([^/]+\.jpe?g)$", re.IGNORECASE)
_VAL_ANNOTATIONS = "tin/val/val_annotations.txt"


class KitError(FileNotFoundError):
    """The offline kit is missing, incomplete or corrupt."""


# --------------------------------------------------------------------------------------------- paths


def default_kit_dir() -> Path:
    """Return the kit folder: ``$AVALANCHE_PROMPTMOE_KIT`` if set, else ``<project root>/../shared/data``.

    The project root is the parent of the ``avalanche_promptmoe`` package folder.
    """
    env = os.environ.get(KIT_ENV_VAR)
    if env:
        return Path(env).expanduser()
    project_root = Path(__file__).resolve().parents[2]
    return project_root.parent / "shared" / "data"


def default_cache_dir() -> Path:
    """Return the array cache folder: ``$AVALANCHE_PROMPTMOE_CACHE`` if set, else ``~/.cache/avalanche_promptmoe``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "avalanche_promptmoe"


def _resolve_kit_dir(kit_dir: str | os.PathLike | None) -> Path:
    kit = default_kit_dir() if kit_dir is None else Path(kit_dir).expanduser()
    if kit.is_file():  # the tar or the json itself
        kit = kit.parent
    if not kit.is_dir():
        raise KitError(f"kit folder not found: {kit}; {_KIT_HELP}")
    return kit


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def kit_checksums(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Return the sha256 of the kit's image archive and backbone weights.

    Args:
        root: the kit folder (or a file in it); ``None`` = :func:`default_kit_dir`.

    Returns:
        ``{file name: sha256 hex}`` for the tar.xz and the weight file named in the JSON; compare
        with :data:`KIT_V1_SHA256`.

    Raises:
        KitError: the folder or one of the files is missing.
    """
    kit = _resolve_kit_dir(root)
    weights = KIT_WEIGHTS_NAME
    if (kit / KIT_META_NAME).is_file():
        weights = load_kit_meta(kit).get("weights", KIT_WEIGHTS_NAME)
    out = {}
    for name in (KIT_TAR_NAME, weights):
        path = kit / name
        if not path.is_file():
            raise KitError(f"kit file not found: {path}; {_KIT_HELP}")
        out[name] = _sha256(path)
    return out


def load_kit_meta(kit_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``reference_vit.json`` (backbone recipe, normalization, class split).

    Args:
        kit_dir: the kit folder (or a file in it); ``None`` = :func:`default_kit_dir`.

    Raises:
        KitError: the JSON is missing or unreadable.
    """
    kit = _resolve_kit_dir(kit_dir)
    path = kit / KIT_META_NAME
    if not path.is_file():
        raise KitError(f"kit file not found: {path}; {_KIT_HELP}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise KitError(f"cannot read the kit's {path}: {exc}") from exc


def _downstream_wnids(meta: Mapping[str, Any], path_hint: Path) -> list[str]:
    try:
        wnids = list(meta["split"]["downstream_wnids"])
    except (KeyError, TypeError) as exc:
        raise KitError(f"{path_hint}: no split.downstream_wnids in {KIT_META_NAME}") from exc
    if len(set(wnids)) != len(wnids) or not wnids:
        raise KitError(f"{path_hint}: split.downstream_wnids is empty or has duplicates")
    return wnids


# -------------------------------------------------------------------------------------------- decode


def _decode_jpeg(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise KitError(f"corrupt image {name} in the kit: {exc}") from exc
    if arr.shape != (_IMG_SIZE, _IMG_SIZE, 3):
        raise KitError(f"image {name} in the kit is {arr.shape[1]}x{arr.shape[0]}, expected 32x32")
    return arr


def _stack(items: list[tuple[int, str, np.ndarray]], n_classes: int, split: str, src: Path) -> dict:
    """Sort (label, file name) and stack; check that every class is present."""
    items.sort(key=lambda t: (t[0], t[1]))
    labels = np.fromiter((t[0] for t in items), dtype=np.int64, count=len(items))
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise KitError(
            f"{src}: the {split} split has no image for {len(missing)} downstream classes "
            f"(labels {missing[:5]}...); the archive is incomplete. {_KIT_HELP}"
        )
    x = np.stack([t[2] for t in items]) if items else np.zeros((0, 32, 32, 3), np.uint8)
    return {"x": x, "y": labels, "files": np.array([t[1] for t in items])}


def _decode_tar(tar_path: Path, wnids: Sequence[str]) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    label_of = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[int, str, np.ndarray]] = []
    val_bytes: dict[str, bytes] = {}
    annotations: str | None = None
    n_expected = 550 * len(wnids)  # 500 train + 50 val per class in kit v1 (only sizes the bar)
    try:
        with (
            tarfile.open(tar_path, mode="r|xz") as tf,
            tqdm(total=n_expected, desc="decoding tinyimagenet32", unit="img", leave=False) as bar,
        ):
            for member in tf:  # one sequential pass: xz cannot seek
                if not member.isfile():
                    continue
                if m := _TRAIN_RE.match(member.name):
                    label = label_of.get(m.group(1))
                    if label is None:
                        continue
                    data = tf.extractfile(member).read()
                    train.append((label, m.group(2), _decode_jpeg(data, member.name)))
                    bar.update()
                elif m := _VAL_RE.match(member.name):
                    # labels come from val_annotations.txt, which may follow the images: keep bytes
                    val_bytes[m.group(1)] = tf.extractfile(member).read()
                elif member.name == _VAL_ANNOTATIONS:
                    annotations = tf.extractfile(member).read().decode("utf-8")
            if annotations is None:
                raise KitError(f"{tar_path}: no {_VAL_ANNOTATIONS} in the archive. {_KIT_HELP}")
            test: list[tuple[int, str, np.ndarray]] = []
            for line in annotations.splitlines():
                parts = line.split("\t")
                if len(parts) < 2 or parts[1] not in label_of:
                    continue
                fname = parts[0]
                if fname not in val_bytes:
                    raise KitError(f"{tar_path}: {fname} is annotated but missing from tin/val/images")
                test.append((label_of[parts[1]], fname, _decode_jpeg(val_bytes[fname], fname)))
                bar.update()
    except (tarfile.TarError, lzma.LZMAError, EOFError, zlib.error) as exc:
        raise KitError(f"corrupt or truncated kit archive {tar_path}: {exc}; {_KIT_HELP}") from exc
    tr = _stack(train, len(wnids), "train", tar_path)
    te = _stack(test, len(wnids), "test", tar_path)
    return {
        "x_train": tr["x"],
        "y_train": tr["y"],
        "train_files": tr["files"],
        "x_test": te["x"],
        "y_test": te["y"],
        "test_files": te["files"],
    }


def _read_extracted(folder: Path, wnids: Sequence[str]) -> dict[str, np.ndarray]:
    """Decode an extracted kit (``folder/tin/...``) straight from disk (not cached)."""
    from tqdm.auto import tqdm

    tin = folder / "tin"
    label_of = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[int, str, np.ndarray]] = []
    test: list[tuple[int, str, np.ndarray]] = []
    ann = tin / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise KitError(f"{ann} not found in the extracted kit. {_KIT_HELP}")
    val_jobs = []
    for line in ann.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in label_of:
            val_jobs.append((label_of[parts[1]], parts[0], tin / "val" / "images" / parts[0]))
    train_jobs = []
    for wnid, label in label_of.items():
        img_dir = tin / "train" / wnid / "images"
        if img_dir.is_dir():
            pattern = f"tin/train/{wnid}/images/{{}}"
            train_jobs += [
                (label, p.name, p) for p in img_dir.iterdir() if _TRAIN_RE.match(pattern.format(p.name))
            ]
    with tqdm(
        total=len(train_jobs) + len(val_jobs), desc="decoding tinyimagenet32", unit="img", leave=False
    ) as bar:
        for jobs, out in ((train_jobs, train), (val_jobs, test)):
            for label, name, path in jobs:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise KitError(f"cannot read {path}: {exc}") from exc
                out.append((label, name, _decode_jpeg(data, str(path))))
                bar.update()
    tr = _stack(train, len(wnids), "train", folder)
    te = _stack(test, len(wnids), "test", folder)
    return {
        "x_train": tr["x"],
        "y_train": tr["y"],
        "train_files": tr["files"],
        "x_test": te["x"],
        "y_test": te["y"],
        "test_files": te["files"],
    }


_ARRAY_KEYS = ("x_train", "y_train", "train_files", "x_test", "y_test", "test_files")


def _cache_path(cache_dir: Path, tar_sha: str, wnids: Sequence[str]) -> Path:
    split_sha = hashlib.sha256("\n".join(wnids).encode()).hexdigest()
    return cache_dir / f"tinyimagenet32-{tar_sha[:16]}-{split_sha[:8]}-v{_CACHE_FORMAT}.npz"


def _load_cache(path: Path, tar_sha: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["tar_sha256"]) != tar_sha or any(k not in z for k in _ARRAY_KEYS):
                logger.warning("ignoring stale kit cache %s (different archive or layout)", path)
                return None
            return {k: z[k] for k in _ARRAY_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        logger.warning("ignoring unreadable kit cache %s: %s", path, exc)
        return None


def _save_cache(path: Path, arrays: Mapping[str, np.ndarray], tar_sha: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as exc:
        logger.warning("cannot write the kit cache in %s (%s); continuing without it", path.parent, exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, tar_sha256=np.array(tar_sha), **arrays)
        os.replace(tmp, path)
        logger.info("cached decoded kit arrays in %s", path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            logger.warning("cannot write the kit cache %s (%s); continuing without it", path, exc)
            return
        raise


def load_kit_arrays(
    root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Decode the downstream half of Tiny-ImageNet-32 to uint8 arrays (cached).

    Samples are ordered by label, then by file name (plain string sort) within a class; label = the
    index of the class's wnid in ``reference_vit.json``'s ``split.downstream_wnids``.

    Args:
        root: the kit folder (holding ``tinyimagenet32-jpeg.tar.xz`` and ``reference_vit.json``), the
            tar.xz itself (the JSON must sit next to it), or an extracted folder holding ``tin/`` (the
            JSON in it or in its parent; read from disk, not cached). ``None`` = :func:`default_kit_dir`.
        cache_dir: where the decoded arrays are cached, keyed by the tar's sha256 and the class list;
            ``None`` = :func:`default_cache_dir`.

    Returns:
        ``x_train`` (N, 32, 32, 3) uint8, ``y_train`` (N,) int64, ``train_files``, and the same for
        ``test``; ``wnids`` (the downstream list, index = label); ``tar_sha256`` (``None`` for an
        extracted folder); ``kit_dir`` (the folder of ``reference_vit.json``). Kit v1: 50,000 train (500 per class) and 5,000 test (50 per class).

    Raises:
        KitError: the kit is missing, incomplete or corrupt (a ``FileNotFoundError``).
    """
    src = default_kit_dir() if root is None else Path(root).expanduser()
    if src.is_file() and src.suffix in (".json", ".pth"):  # another file of the kit: use its folder
        src = src.parent
    if src.is_file():
        tar_path: Path | None = src
        meta_dir = src.parent
    elif (src / KIT_TAR_NAME).is_file():
        tar_path, meta_dir = src / KIT_TAR_NAME, src
    elif (src / "tin").is_dir():
        tar_path = None
        meta_dir = src if (src / KIT_META_NAME).is_file() else src.parent
    elif src.exists():
        raise KitError(f"{src} holds neither {KIT_TAR_NAME} nor an extracted tin/ folder; {_KIT_HELP}")
    else:
        raise KitError(f"kit not found: {src} does not exist; {_KIT_HELP}")
    if not (meta_dir / KIT_META_NAME).is_file():
        raise KitError(f"{KIT_META_NAME} not found in {meta_dir} (it holds the class split); {_KIT_HELP}")
    wnids = _downstream_wnids(load_kit_meta(meta_dir), meta_dir / KIT_META_NAME)

    if tar_path is None:
        arrays = _read_extracted(src, wnids)
        tar_sha = None
    else:
        tar_sha = _sha256(tar_path)
        cache = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), tar_sha, wnids)
        arrays = _load_cache(cache, tar_sha)
        if arrays is None:
            logger.info("decoding %s (one pass, ~15 s on 2 cores; cached afterwards)", tar_path)
            arrays = _decode_tar(tar_path, wnids)
            _save_cache(cache, arrays, tar_sha)
        else:
            logger.debug("kit arrays from cache %s", cache)
    return {**arrays, "wnids": list(wnids), "tar_sha256": tar_sha, "kit_dir": meta_dir}


# ----------------------------------------------------------------------------------------- transform


class ToModelInput:
    """Image -> normalized float32 CHW tensor: ``(x / 255 - mean) / std`` (picklable, deterministic).

    Accepts a uint8 CHW tensor (the benchmark's storage), a float CHW tensor in [0, 1], a uint8 HWC
    ``numpy`` array, or a PIL image.

    Args:
        mean: per-channel mean, in [0, 1] units.
        std: per-channel std, in [0, 1] units.
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)  # uint8 input
        self._scale01 = 1.0 / std_t  # [0, 1] float input
        self._shift = -torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, img: Any) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            arr = np.asarray(img)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        if img.dtype == torch.uint8:
            return img.float().mul_(self._scale).add_(self._shift)
        return img.float().mul(self._scale01).add_(self._shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def reference_transform(kit_dir: str | os.PathLike | None = None) -> ToModelInput:
    """The reference ViT's input transform: RGB in [0, 1] normalized with the JSON's mean/std.

    Args:
        kit_dir: the kit folder; ``None`` = :func:`default_kit_dir`.
    """
    norm = load_kit_meta(kit_dir).get("normalization", {})
    return ToModelInput(norm.get("mean", (0.5, 0.5, 0.5)), norm.get("std", (0.5, 0.5, 0.5)))


# ----------------------------------------------------------------------------------------- benchmark


def _take_first_per_class(y: np.ndarray, k: int | None, name: str, n_classes: int) -> np.ndarray:
    """Indices of the first ``k`` samples of each class (in array order)."""
    counts = np.bincount(y, minlength=n_classes)
    if k is None:
        return np.arange(len(y))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive int or None, got {k!r}")
    if k > counts.min():
        raise ValueError(f"{name}={k} exceeds the images available per class (min {int(counts.min())})")
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.concatenate([order[s : s + k] for s in starts])
    return np.sort(keep)


def split_tinyimagenet32(
    root: str | os.PathLike | None = None,
    n_experiences: int = 10,
    seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    normalize: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """Class-incremental Split Tiny-ImageNet-32 on the kit's 100 downstream classes.

    Built with Avalanche's ``class_incremental_benchmark`` (streams ``train`` and ``test``, samples
    ``(x, y)``, no task labels, labels not remapped). The class order is
    ``numpy.random.RandomState(seed).permutation(100)``, passed as ``class_order``: building the
    benchmark leaves the global torch RNG untouched. Images are stored as uint8 and converted on
    access to float32 CHW tensors, normalized with the JSON's mean/std (model-ready), or in [0, 1]
    with ``normalize=False``. The same deterministic transform serves the train and eval groups.

    Args:
        root: the kit (see :func:`load_kit_arrays`); ``None`` = :func:`default_kit_dir`.
        n_experiences: number of experiences; must divide the number of classes (100).
        seed: seed of the class order.
        train_per_class: keep the first k train images of each class (file-name order); ``None`` = all.
        test_per_class: the same for the test images; ``None`` = all.
        normalize: normalize with the reference ViT's mean/std (else [0, 1]).
        cache_dir: the array cache (see :func:`load_kit_arrays`).

    Returns:
        An Avalanche ``CLScenario`` with ``train_stream`` / ``test_stream``; it also carries
        ``class_order`` (list of int), ``protocol`` (the arguments, the kit's sha256 and wnids).

    Raises:
        ValueError: ``n_experiences`` does not divide 100, or a per-class count exceeds the images.
        KitError: the kit is missing or corrupt.
    """
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset
    from avalanche.benchmarks.utils.transform_groups import TransformGroups
    from torch.utils.data import TensorDataset

    if (
        isinstance(n_experiences, bool)
        or not isinstance(n_experiences, (int, np.integer))
        or n_experiences < 1
    ):
        raise ValueError(f"n_experiences must be a positive int, got {n_experiences!r}")
    data = load_kit_arrays(root, cache_dir=cache_dir)
    n_classes = len(data["wnids"])
    if n_classes % n_experiences:
        raise ValueError(
            f"n_experiences={n_experiences} must divide the {n_classes} classes "
            "(class_incremental_benchmark would silently drop the remainder)"
        )
    tr_idx = _take_first_per_class(data["y_train"], train_per_class, "train_per_class", n_classes)
    te_idx = _take_first_per_class(data["y_test"], test_per_class, "test_per_class", n_classes)

    transform = reference_transform(data["kit_dir"]) if normalize else ToModelInput()
    groups = TransformGroups({"train": transform, "eval": transform})

    def as_dataset(x: np.ndarray, y: np.ndarray) -> Any:
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # uint8 NCHW
        ds = TensorDataset(xt, torch.from_numpy(y))
        ds.targets = y.tolist()
        return as_classification_dataset(ds, transform_groups=groups)

    class_order = np.random.RandomState(seed).permutation(n_classes).tolist()
    bm = class_incremental_benchmark(
        {
            "train": as_dataset(data["x_train"][tr_idx], data["y_train"][tr_idx]),
            "test": as_dataset(data["x_test"][te_idx], data["y_test"][te_idx]),
        },
        class_order=class_order,
        num_experiences=int(n_experiences),
    )
    bm.class_order = class_order
    bm.protocol = {
        "benchmark": "split_tinyimagenet32",
        "n_experiences": int(n_experiences),
        "seed": int(seed),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "normalize": bool(normalize),
        "n_train": len(tr_idx),
        "n_test": len(te_idx),
        "tar_sha256": data["tar_sha256"],
        "wnids": data["wnids"],
        "transform": repr(transform),
    }
    return bm


# ----------------------------------------------------------------------------------------- backbone


def load_reference_backbone(kit_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build the kit's frozen reference ViT from ``reference_vit.json`` (float32, eval mode, no head).

    Args:
        kit_dir: the kit folder; ``None`` = :func:`default_kit_dir`.

    Returns:
        A frozen timm ``VisionTransformer`` (``num_classes=0``: it returns the pooled [CLS] features).

    Raises:
        KitError: the JSON or the weight file is missing.
    """
    from avalanche_promptmoe.engine import create_backbone

    kit = _resolve_kit_dir(kit_dir)
    meta = load_kit_meta(kit)
    weights = kit / meta.get("weights", KIT_WEIGHTS_NAME)
    if not weights.is_file():
        raise KitError(f"kit file not found: {weights}; {_KIT_HELP}")
    model = create_backbone(meta["timm_name"], checkpoint_path=weights, **meta.get("timm_kwargs", {}))
    if any(p.dtype != torch.float32 for p in model.parameters()):
        logger.debug("casting the reference backbone to float32 (weights are %s)", meta.get("weights_dtype"))
        model = model.float()
    return model
