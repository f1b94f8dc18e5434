"""Where the kit's 32-px images come from, and how they are packed into ``tinyimagenet32-jpeg.tar.xz``.

Three routes, all ending in the same ``tin/`` layout (``docs/DATA.md``) and checked against the
shipped kit's per-image digests (:mod:`avalanche_promptmoe.kit.digests`):

* a local file or folder: the kit's tar.xz (copied as is), or any zip / tar / folder holding the
  Tiny-ImageNet layout (``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images``,
  ``val/val_annotations.txt``) under one root folder;
* their public source, the GitHub repository :data:`GITHUB_REPO` at :data:`GITHUB_COMMIT`
  (downloaded by URL as a zip archive);
* the original 64-px Tiny-ImageNet-200 zip (:data:`TINY_IMAGENET_200_URL`), downsampled to 32 px
  (2x2 box filter) and re-encoded as JPEG quality 75. Its pixels differ from the shipped images
  (another resampling and encoder), so its digests do not match: the build says so and goes on.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from avalanche_promptmoe.kit.locate import KIT_HELP, KitError

logger = logging.getLogger(__name__)

__all__ = [
    "GITHUB_REPO",
    "GITHUB_COMMIT",
    "GITHUB_ARCHIVE_URL",
    "TINY_IMAGENET_200_URL",
    "download",
    "iter_dataset_members",
    "pack_kit_tar",
]

GITHUB_REPO = "DhanashriPalodkar/imageet32x32"
GITHUB_COMMIT = "17536f5460bd63802cddfccea1844857b2c0ec04"
GITHUB_ARCHIVE_URL = f"https://github.com/{GITHUB_REPO}/archive/{GITHUB_COMMIT}.zip"
TINY_IMAGENET_200_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMG_SIZE = 32
JPEG_QUALITY = 75


def download(url: str, dest: Path, *, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (a temporary name first; a progress bar). Reuses an existing ``dest``.

    Raises:
        KitError: the download failed (no network, HTTP error), naming the URL and the local routes.
    """
    from tqdm.auto import tqdm

    if dest.is_file():
        logger.info("using the earlier download %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                      disable=not progress) as bar:
                while block := resp.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KitError(f"cannot download {url}: {exc}; without network, pass a local copy with --images "
                       f"or --tiny-imagenet-200") from exc
    tmp.replace(dest)
    return dest


_KEEP_TOP = ("wnids.txt", "words.txt")
_KEEP_DIRS = ("train/", "val/")


def _relative(name: str, root: str) -> str | None:
    """The member's path below the dataset root (the folder of ``wnids.txt``), or None to skip it."""
    if not name.startswith(root):
        return None
    rel = name[len(root):]
    return rel if rel in _KEEP_TOP or rel.startswith(_KEEP_DIRS) else None


_TRAIN_IMAGE = re.compile(r"^(.*?)train/(n\d+)/images/[^/]+$")


def _root_of(names: list[str], src: Path) -> str:
    """The dataset root: the folder of ``wnids.txt``, else the folder above ``train/<wnid>/images``."""
    roots = sorted((n[: -len("wnids.txt")] for n in names if n.endswith("wnids.txt")), key=len)
    roots = roots or sorted({m.group(1) for n in names if (m := _TRAIN_IMAGE.match(n))}, key=len)
    if not roots:
        raise KitError(f"{src}: neither wnids.txt nor train/<wnid>/images found; expected the Tiny-ImageNet "
                       f"layout (wnids.txt, train/<wnid>/images, val/images, val/val_annotations.txt). {KIT_HELP}")
    return roots[0]


def iter_dataset_members(src: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(path below the dataset root, bytes)`` of ``wnids.txt``, ``words.txt``, ``train/**`` and
    ``val/**`` files from a zip, a tar (any compression) or a folder; ``test/`` is skipped.

    Raises:
        KitError: ``src`` is missing, unreadable or has no ``wnids.txt``.
    """
    src = Path(src).expanduser()
    if src.is_dir():
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        root = _root_of(files, src)
        for name in files:
            if (rel := _relative(name, root)) is not None:
                yield rel, (src / name).read_bytes()
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            names = sorted(n for n in zf.namelist() if not n.endswith("/"))
            root = _root_of(names, src)
            for name in names:
                if (rel := _relative(name, root)) is not None:
                    yield rel, zf.read(name)
    elif src.is_file():
        try:
            with tarfile.open(src, "r:*") as tf:
                members = [m for m in tf.getmembers() if m.isfile()]
                root = _root_of([m.name for m in members], src)
                for m in members:
                    if (rel := _relative(m.name, root)) is not None:
                        yield rel, tf.extractfile(m).read()
        except tarfile.TarError as exc:
            raise KitError(f"{src}: neither a zip nor a readable tar ({exc})") from exc
    else:
        raise KitError(f"image source not found: {src}")


def to_kit_jpeg(data: bytes, name: str) -> bytes:
    """The image as the kit stores it: unchanged if it is a 32x32 JPEG, else RGB, downsampled to 32x32
    (box filter: the mean of each 2x2 block for a 64-px image) and saved as JPEG quality 75."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size == (IMG_SIZE, IMG_SIZE) and im.format == "JPEG":
                return data
            small = im.convert("RGB").resize((IMG_SIZE, IMG_SIZE), Image.Resampling.BOX)
    except OSError as exc:
        raise KitError(f"corrupt image {name} in the image source: {exc}") from exc
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def is_kit_tar(src: Path) -> bool:
    """Whether ``src`` is already a kit archive (a tar.xz whose files lie under ``tin/``)."""
    if not (src.is_file() and src.name.endswith(".tar.xz")):
        return False
    try:
        with tarfile.open(src, "r|xz") as tf:
            first = next((m for m in tf if m.isfile()), None)
    except (tarfile.TarError, OSError, EOFError):
        return False
    return first is not None and first.name.startswith("tin/")


def pack_kit_tar(src: str | Path, out: Path, *, progress: bool = True) -> Path:
    """Write the kit archive ``out`` from an image source: copy a kit tar.xz as is, else repack the
    dataset's members under ``tin/`` (sorted, fixed metadata, images through :func:`to_kit_jpeg`)."""
    from tqdm.auto import tqdm

    src = Path(src).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    if is_kit_tar(src):
        if src.resolve() != out.resolve():
            shutil.copyfile(src, out)
        return out
    tmp = out.with_name(out.name + ".part")
    members = sorted(iter_dataset_members(src))
    names = {rel for rel, _ in members}
    if "val/val_annotations.txt" not in names:
        raise KitError(f"{src}: no val/val_annotations.txt (the val images' labels); use another image route")
    if "wnids.txt" not in names:  # a copy without it: the wnids are the train folders
        wnids = sorted({rel.split("/")[1] for rel in names if rel.startswith("train/")})
        members = sorted([*members, ("wnids.txt", "\n".join(wnids).encode() + b"\n")])
    with tarfile.open(tmp, "w:xz") as tf:
        for rel, data in tqdm(members, desc="packing the kit archive", unit="file", disable=not progress):
            if rel.lower().endswith((".jpeg", ".jpg")):
                data = to_kit_jpeg(data, rel)
            info = tarfile.TarInfo(f"tin/{rel}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return out
