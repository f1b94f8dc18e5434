"""The kit's images as arrays: the downstream half of Tiny-ImageNet-32, decoded once and cached.

xz cannot seek, so the tar is read once, sequentially, and the decoded uint8 arrays are cached as an
``.npz`` keyed by the tar's sha256 (``~/.cache/avalanche_promptmoe/`` by default, or
``$AVALANCHE_PROMPTMOE_CACHE``). Label = index of the wnid in ``reference_vit.json``'s
``split.downstream_wnids``.
"""

from __future__ import annotations

import hashlib
import io
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

from avalanche_promptmoe.kit.files import expected_checksums, load_kit_meta, sha256_file
from avalanche_promptmoe.kit.locate import (
    KIT_HELP,
    KIT_META_NAME,
    KIT_TAR_NAME,
    KitError,
    default_cache_dir,
    default_kit_dir,
)

logger = logging.getLogger(__name__)

__all__ = ["load_kit_arrays", "downstream_wnids", "decode_jpeg", "decode_kit_tar"]

_CACHE_FORMAT = 1  # bump when the cached arrays' layout or ordering changes
_IMG_SIZE = 32
_TRAIN_RE = re.compile(r"^tin/train/(n\d+)/images/([^/]+\.jpe?g)$", re.IGNORECASE)
_VAL_RE = re.compile(r"^tin/val/images/([^/]+\.jpe?g)$", re.IGNORECASE)
_VAL_ANNOTATIONS = "tin/val/val_annotations.txt"


def downstream_wnids(meta: Mapping[str, Any], path_hint: Path) -> list[str]:
    try:
        wnids = list(meta["split"]["downstream_wnids"])
    except (KeyError, TypeError) as exc:
        raise KitError(f"{path_hint}: no split.downstream_wnids in {KIT_META_NAME}") from exc
    if len(set(wnids)) != len(wnids) or not wnids:
        raise KitError(f"{path_hint}: split.downstream_wnids is empty or has duplicates")
    return wnids


# -------------------------------------------------------------------------------------------- decode


def decode_jpeg(data: bytes, name: str) -> np.ndarray:
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
            f"(labels {missing[:5]}...); the archive is incomplete. {KIT_HELP}"
        )
    x = np.stack([t[2] for t in items]) if items else np.zeros((0, 32, 32, 3), np.uint8)
    return {"x": x, "y": labels, "files": np.array([t[1] for t in items])}


def _split_arrays(train: list, test: list, n_classes: int, src: Path) -> dict[str, np.ndarray]:
    """``x_train, y_train, train_files`` and the same for test, from (label, file, image) items."""
    tr, te = _stack(train, n_classes, "train", src), _stack(test, n_classes, "test", src)
    return {"x_train": tr["x"], "y_train": tr["y"], "train_files": tr["files"],
            "x_test": te["x"], "y_test": te["y"], "test_files": te["files"]}


def decode_kit_tar(tar_path: Path, wnids: Sequence[str], *, progress: bool = True) -> dict[str, np.ndarray]:
    """Decode the train and val images of the classes ``wnids`` (label = index) from a kit tar, in one
    sequential pass; ``x_train (N, 32, 32, 3)`` uint8, ``y_train``, ``train_files`` and the same for test."""
    from tqdm.auto import tqdm

    label_of = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[int, str, np.ndarray]] = []
    val_bytes: dict[str, bytes] = {}
    annotations: str | None = None
    n_expected = 550 * len(wnids)  # 500 train + 50 val per class in kit v1 (only sizes the bar)
    try:
        with (
            tarfile.open(tar_path, mode="r|xz") as tf,
            tqdm(total=n_expected, desc="decoding tinyimagenet32", unit="img", leave=False, disable=not progress) as bar,
        ):
            for member in tf:  # one sequential pass: xz cannot seek
                if not member.isfile():
                    continue
                if m := _TRAIN_RE.match(member.name):
                    label = label_of.get(m.group(1))
                    if label is None:
                        continue
                    data = tf.extractfile(member).read()
                    train.append((label, m.group(2), decode_jpeg(data, member.name)))
                    bar.update()
                elif m := _VAL_RE.match(member.name):
                    # labels come from val_annotations.txt, which may follow the images: keep bytes
                    val_bytes[m.group(1)] = tf.extractfile(member).read()
                elif member.name == _VAL_ANNOTATIONS:
                    annotations = tf.extractfile(member).read().decode("utf-8")
            if annotations is None:
                raise KitError(f"{tar_path}: no {_VAL_ANNOTATIONS} in the archive. {KIT_HELP}")
            test: list[tuple[int, str, np.ndarray]] = []
            for line in annotations.splitlines():
                parts = line.split("\t")
                if len(parts) < 2 or parts[1] not in label_of:
                    continue
                fname = parts[0]
                if fname not in val_bytes:
                    raise KitError(f"{tar_path}: {fname} is annotated but missing from tin/val/images")
                test.append((label_of[parts[1]], fname, decode_jpeg(val_bytes[fname], fname)))
                bar.update()
    except (tarfile.TarError, lzma.LZMAError, EOFError, zlib.error) as exc:
        raise KitError(f"corrupt or truncated kit archive {tar_path}: {exc}; {KIT_HELP}") from exc
    return _split_arrays(train, test, len(wnids), tar_path)


def _read_extracted(folder: Path, wnids: Sequence[str]) -> dict[str, np.ndarray]:
    """Decode an extracted kit (``folder/tin/...``) straight from disk (not cached)."""
    from tqdm.auto import tqdm

    tin = folder / "tin"
    label_of = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[int, str, np.ndarray]] = []
    test: list[tuple[int, str, np.ndarray]] = []
    ann = tin / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise KitError(f"{ann} not found in the extracted kit. {KIT_HELP}")
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
                out.append((label, name, decode_jpeg(data, str(path))))
                bar.update()
    return _split_arrays(train, test, len(wnids), folder)


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
        raise KitError(f"{src} holds neither {KIT_TAR_NAME} nor an extracted tin/ folder; {KIT_HELP}")
    else:
        raise KitError(f"kit not found: {src} does not exist; {KIT_HELP}")
    if not (meta_dir / KIT_META_NAME).is_file():
        raise KitError(f"{KIT_META_NAME} not found in {meta_dir} (it holds the class split); {KIT_HELP}")
    meta = load_kit_meta(meta_dir)
    wnids = downstream_wnids(meta, meta_dir / KIT_META_NAME)

    if tar_path is None:
        arrays = _read_extracted(src, wnids)
        tar_sha = None
    else:
        tar_sha = sha256_file(tar_path)
        listed = expected_checksums(meta).get(tar_path.name) if "sha256" in meta else None
        if listed is not None and listed != tar_sha:
            raise KitError(f"{tar_path}: sha256 {tar_sha} differs from {listed} listed in {KIT_META_NAME}; "
                           f"the archive is corrupt or belongs to another kit. {KIT_HELP}")
        cache = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), tar_sha, wnids)
        arrays = _load_cache(cache, tar_sha)
        if arrays is None:
            logger.info("decoding %s (one pass, ~15 s on 2 cores; cached afterwards)", tar_path)
            arrays = decode_kit_tar(tar_path, wnids)
            _save_cache(cache, arrays, tar_sha)
        else:
            logger.debug("kit arrays from cache %s", cache)
    return {**arrays, "wnids": list(wnids), "tar_sha256": tar_sha, "kit_dir": meta_dir}

