"""Paths a user gives (checkpoints, run folders): ``~`` expanded everywhere, and folders created
with an error that names a path component that is a regular file (issue #22 items 9 and 5)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["make_directory", "user_path"]


def user_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`~pathlib.Path` with ``~`` / ``~user`` expanded (as a shell would)."""
    return Path(os.fspath(path)).expanduser()


def make_directory(directory: str | os.PathLike[str], what: str) -> Path:
    """Create ``directory`` and its parents (``~`` expanded); returns it.

    Raises:
        NotADirectoryError: ``directory`` or one of its parents is a regular file (named, with ``what``,
            the argument it came from).
        PermissionError: a folder cannot be created there (named, with ``what``).
    """
    directory = user_path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), directory)
        raise NotADirectoryError(
            f"{what}: {str(blocking)!r} is a regular file, not a folder, so {str(directory)!r} cannot be created; "
            f"choose another path or move the file"
        ) from err
    except PermissionError as err:
        raise PermissionError(
            f"{what}: cannot create the folder {str(directory)!r} (permission denied); choose a writable path"
        ) from err
    return directory
