"""Image files on disk for the CUB-200 and ImageNet-R builders: a lazy dataset whose decode errors name
the file, and a full check of every file (``verify=True`` on the builders, ``--verify-data`` in the runner).

A truncated or corrupt image is found at the latest when it is first read (the error names the file
and says how to list every bad one); with ``verify=True`` every file is decoded once, in threads, before
the benchmark is returned, and all bad files are listed together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.utils.data import Dataset

from avalanche_promptmoe.benchmarks.errors import DatasetNotFoundError

__all__ = ["CorruptImageError", "ImagePathsDataset", "check_image", "load_rgb", "verify_image_datasets"]

_LISTED = 20  # bad files named in a verify error (all are in ``.paths``)


class CorruptImageError(DatasetNotFoundError):
    """One or more image files cannot be decoded (truncated, corrupt, not an image, unreadable).

    ``paths`` holds the full paths of the bad files (all of them after a ``verify`` pass). Constructible
    from the message alone, so that PyTorch's DataLoader workers re-raise it with its own type.
    """

    def __init__(self, message: str, paths: Sequence[str] = ()):
        super().__init__(message)
        self.paths = list(paths)


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # OSError: truncated / unreadable / unidentified (UnidentifiedImageError is an OSError);
    # SyntaxError / ValueError: malformed headers in some PIL plugins; DecompressionBombError: absurd size
    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike) -> Any:
    """Open and fully decode ``path`` as an RGB ``PIL.Image``.

    Raises:
        CorruptImageError: the file is missing, truncated or not a decodable image; the message names
            the file and PIL's reason.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except _decode_errors() as exc:
        raise CorruptImageError(
            f"cannot read image {os.fspath(path)}: {type(exc).__name__}: {exc}. Replace the file (re-extract "
            f"the dataset) or delete it and its list entry; build the benchmark with verify=True "
            f"(runner: --verify-data) to list every bad file before training",
            [os.fspath(path)],
        ) from exc


def check_image(path: str | os.PathLike) -> str | None:
    """Decode ``path`` completely (JPEGs at reduced scale, which still reads every byte of the scan);
    ``None`` if it decodes, else the reason (``"OSError: image file is truncated ..."``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    except _decode_errors() as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class ImagePathsDataset(Dataset):
    """A lazy image dataset: ``(PIL RGB image, label)`` read from ``root / paths[i]`` on access.

    Picklable (plain strings and ints), so it works with multi-process DataLoaders. Exposes
    ``.targets`` (list of int), as Avalanche's ``as_classification_dataset`` requires. A file that
    cannot be decoded raises :class:`CorruptImageError` naming it.

    Args:
        root: folder the relative paths are resolved against.
        paths: relative (POSIX) paths of the images.
        targets: one integer label per path.
        transform: optional transform applied to the PIL image (Avalanche's transform groups are
            usually used instead).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        paths: Sequence[str],
        targets: Sequence[int],
        transform: Callable[[Any], Any] | None = None,
    ):
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.root = str(root)
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = load_rgb(os.path.join(self.root, self.paths[index]))
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, n={len(self)})"


def verify_image_datasets(
    datasets: Iterable[ImagePathsDataset], name: str, *, progress: bool = True, workers: int | None = None
) -> int:
    """Decode every file of ``datasets`` once (threads; a tqdm bar unless ``progress=False``).

    Args:
        datasets: the datasets whose files are checked.
        name: the dataset's name for the bar and the error (``"CUB-200"``).
        progress: show a progress bar.
        workers: decoding threads (default ``min(8, cpu count)``).

    Returns:
        The number of files checked (all good).

    Raises:
        CorruptImageError: listing the bad files (the first 20 in the message, all in ``.paths``) with
            each one's reason.
    """
    from tqdm.auto import tqdm

    files = [os.path.join(ds.root, p) for ds in datasets for p in ds.paths]
    workers = workers or min(8, os.cpu_count() or 1)
    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(check_image, files, chunksize=64)
        for path, reason in tqdm(zip(files, reasons), total=len(files), desc=f"verifying {name} images",
                                 unit="img", disable=not progress):
            if reason is not None:
                bad.append((path, reason))
    if bad:
        listed = "\n".join(f"  {path}: {reason}" for path, reason in bad[:_LISTED])
        more = f"\n  ... and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
        raise CorruptImageError(
            f"{name}: {len(bad)} of {len(files)} image files cannot be decoded; replace them (re-extract the "
            f"dataset) or delete them and their list entries:\n{listed}{more}",
            [path for path, _ in bad],
        )
    return len(files)
