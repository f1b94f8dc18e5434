"""Reading and verifying the kit's files: ``reference_vit.json`` and the sha256 of every file.

A rebuilt kit's JSON lists the sha256 of its files under ``"sha256"`` (``{file name: hex}``); the
shipped kit v1 predates that field, so its sums are :data:`KIT_V1_SHA256`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from avalanche_promptmoe.kit.locate import (
    KIT_HELP,
    KIT_META_NAME,
    KIT_TAR_NAME,
    KIT_WEIGHTS_NAME,
    KitError,
    resolve_kit_dir,
)

__all__ = ["KIT_V1_SHA256", "sha256_file", "load_kit_meta", "kit_checksums", "expected_checksums", "verify_kit"]

#: sha256 of the kit files as shipped (kit v1, ``docs/DATA.md``). CI baselines record these so that a
#: replaced kit reads as "kit changed", not as a regression.
KIT_V1_SHA256: dict[str, str] = {
    KIT_TAR_NAME: "6eb68e73f44a44bba08611717b53f60b4e9609a42e673cdda07ff2e9c102cd39",
    KIT_WEIGHTS_NAME: "7834f24dc88a87e9ea49b719606f4d55312dcf468d02c968235f5f1a08e010a2",
}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_kit_meta(kit_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``reference_vit.json`` (backbone recipe, normalization, class split).

    Args:
        kit_dir: the kit folder (or a file in it); ``None`` = :func:`default_kit_dir`.

    Raises:
        KitError: the JSON is missing or unreadable.
    """
    kit = resolve_kit_dir(kit_dir)
    path = kit / KIT_META_NAME
    if not path.is_file():
        raise KitError(f"kit file not found: {path}; {KIT_HELP}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise KitError(f"cannot read the kit's {path}: {exc}") from exc


def _weights_name(kit: Path) -> str:
    if (kit / KIT_META_NAME).is_file():
        return load_kit_meta(kit).get("weights", KIT_WEIGHTS_NAME)
    return KIT_WEIGHTS_NAME


def kit_checksums(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Return the sha256 of the kit's image archive and backbone weights.

    Args:
        root: the kit folder (or a file in it); ``None`` = :func:`default_kit_dir`.

    Returns:
        ``{file name: sha256 hex}`` for the tar.xz and the weight file named in the JSON; compare
        with :func:`expected_checksums` (:data:`KIT_V1_SHA256` for the shipped kit).

    Raises:
        KitError: the folder or one of the files is missing.
    """
    kit = resolve_kit_dir(root)
    out = {}
    for name in (KIT_TAR_NAME, _weights_name(kit)):
        path = kit / name
        if not path.is_file():
            raise KitError(f"kit file not found: {path}; {KIT_HELP}")
        out[name] = sha256_file(path)
    return out


def expected_checksums(meta: dict[str, Any]) -> dict[str, str]:
    """The sums a kit's JSON promises: its ``"sha256"`` table, else kit v1's (the shipped JSON has none)."""
    listed = meta.get("sha256")
    if listed is None:
        return dict(KIT_V1_SHA256)
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise KitError(f"{KIT_META_NAME}: 'sha256' must map file names to hex digests, got {listed!r}")
    return dict(listed)


def verify_kit(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Check the sha256 of every file the kit's JSON lists (kit v1: :data:`KIT_V1_SHA256`).

    Returns:
        ``{file name: sha256}`` of the checked files.

    Raises:
        KitError: a file is missing or its sha256 differs (the message names the file, both sums,
            and what to do).
    """
    kit = resolve_kit_dir(root)
    expected = expected_checksums(load_kit_meta(kit))
    found = {}
    for name, want in sorted(expected.items()):
        path = kit / name
        if not path.is_file():
            raise KitError(f"kit file not found: {path} (listed in {KIT_META_NAME}); {KIT_HELP}")
        found[name] = sha256_file(path)
        if found[name] != want:
            raise KitError(
                f"{path}: sha256 {found[name]} differs from {want} in {KIT_META_NAME} (or kit v1's); the "
                "file is corrupt or belongs to another kit: copy it again, or rebuild the kit with "
                "`python -m avalanche_promptmoe.kit build`"
            )
    return found
