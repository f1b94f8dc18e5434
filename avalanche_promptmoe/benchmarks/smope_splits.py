"""SMoPE's official ImageNet-R split lists (``dataloaders/splits/imagenet-r_{train,test}.yaml``).

SMoPE's ImageNet-R runs read two fixed lists (24,000 train / 6,000 test images) instead of a seeded
split; its official recipe does too (DECISIONS.md §H, §I). The lists are not copied into this
repository: they are found locally or downloaded from their public URL, and always checked against
the sha256 recorded here (SMoPE @27b982c5, MIT License, Copyright (c) 2026 Le Duc Minh).

Search order of :func:`smope_split_dir`: an explicit ``path``; ``$AVALANCHE_PROMPTMOE_SMOPE_SPLITS``;
``../shared/data/smope-imagenet-r-splits`` beside a source checkout; the user cache
``~/.cache/avalanche_promptmoe/smope-imagenet-r-splits`` (where :func:`download_smope_splits` puts
them). Each list is ``data:`` (paths ``data/imagenet-r/<wnid>/<file>``) then ``targets:`` (labels);
the labels are the official code's (not the sorted-wnid index) and fix which classes form each task.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import DatasetNotFoundError

__all__ = [
    "SMOPE_SPLITS_COMMIT",
    "SMOPE_SPLITS_ENV_VAR",
    "SMOPE_SPLIT_FILES",
    "download_smope_splits",
    "read_smope_split",
    "smope_split_dir",
    "smope_split_url",
]

SMOPE_SPLITS_COMMIT = "27b982c5d8ff41c345df44e3dd4035b2348548e0"
SMOPE_SPLITS_ENV_VAR = "AVALANCHE_PROMPTMOE_SMOPE_SPLITS"
#: file name → sha256 of the official list (``../shared/data/smope-imagenet-r-splits/README.md``).
SMOPE_SPLIT_FILES = {
    "imagenet-r_train.yaml": "6bcaa14ca9359915ac3a44c48ae71388146385686eb15da79a37844421a0b845",
    "imagenet-r_test.yaml": "57275ac242d68983a4f39ccb81ec34f48b1bd920b9cd79e6e8040d7c042db02a",
}
_FOLDER = "smope-imagenet-r-splits"
_PREFIX = "data/imagenet-r/"


def smope_split_url(name: str) -> str:
    """The public URL of one list at the pinned commit."""
    return f"https://raw.githubusercontent.com/Minhchuyentoancbn/SMoPE/{SMOPE_SPLITS_COMMIT}/dataloaders/splits/{name}"


def _candidates(path: str | os.PathLike | None) -> list[Path]:
    if path is not None:
        return [Path(path).expanduser()]
    out = []
    env = os.environ.get(SMOPE_SPLITS_ENV_VAR)
    if env:
        out.append(Path(env).expanduser())
    out.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / _FOLDER)
    out.append(Path.home() / ".cache" / "avalanche_promptmoe" / _FOLDER)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _where_help() -> str:
    urls = ", ".join(smope_split_url(n) for n in SMOPE_SPLIT_FILES)
    return (
        f"put {' and '.join(SMOPE_SPLIT_FILES)} in a folder given as split_dir= or ${SMOPE_SPLITS_ENV_VAR}, "
        f"or in ../shared/data/{_FOLDER} beside the checkout, or run "
        f"avalanche_promptmoe.benchmarks.smope_splits.download_smope_splits() (downloads {urls})"
    )


def smope_split_dir(path: str | os.PathLike | None = None) -> Path:
    """The first folder of the search order holding both lists, each checked against its sha256.

    Raises:
        DatasetNotFoundError: no folder holds both lists, or a list differs from the official one
            (the message names the file, both checksums and where to put the right one).
    """
    tried = _candidates(path)
    for folder in tried:
        if not all((folder / n).is_file() for n in SMOPE_SPLIT_FILES):
            continue
        for name, expected in SMOPE_SPLIT_FILES.items():
            got = _sha256(folder / name)
            if got != expected:
                raise DatasetNotFoundError(
                    f"{folder / name} is not SMoPE's official list (sha256 {got}, expected {expected}); "
                    f"replace it: {_where_help()}"
                )
        return folder
    raise DatasetNotFoundError(
        f"SMoPE's ImageNet-R split lists not found (looked in {', '.join(str(p) for p in tried)}); {_where_help()}"
    )


def download_smope_splits(dest: str | os.PathLike | None = None) -> Path:
    """Download both lists from their public URLs into ``dest`` (default: the user cache), checking
    each sha256 before it is kept. Returns the folder. Raises ``DatasetNotFoundError`` on a mismatch."""
    import urllib.request

    folder = Path(dest).expanduser() if dest is not None else _candidates(None)[-1]
    folder.mkdir(parents=True, exist_ok=True)
    for name, expected in SMOPE_SPLIT_FILES.items():
        target = folder / name
        if target.is_file() and _sha256(target) == expected:
            continue
        with urllib.request.urlopen(smope_split_url(name), timeout=60) as response:  # noqa: S310 (fixed https URL)
            data = response.read()
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            raise DatasetNotFoundError(f"{smope_split_url(name)} returned a file with sha256 {got}, expected {expected}")
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return folder


def read_smope_split(folder: Path, name: str) -> tuple[list[str], list[int]]:
    """One list as ``(relative paths "<wnid>/<file>", official labels)``, in the file's order."""
    lines = (folder / name).read_text(encoding="utf-8").splitlines()
    try:
        cut = lines.index("targets:")
    except ValueError:
        raise DatasetNotFoundError(f"{folder / name}: no 'targets:' section; {_where_help()}") from None
    paths = [line[2:] for line in lines[1:cut] if line.startswith("- ")]
    labels = [int(line[2:]) for line in lines[cut + 1 :] if line.startswith("- ")]
    if lines[0] != "data:" or len(paths) != len(labels) or not all(p.startswith(_PREFIX) for p in paths):
        raise DatasetNotFoundError(f"{folder / name}: not a SMoPE split list; {_where_help()}")
    return [p[len(_PREFIX) :] for p in paths], labels
