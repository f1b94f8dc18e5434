"""Per-image content digests of a kit archive, to check any route to the images against the shipped kit.

An image's digest is the sha256 of its decoded RGB pixels (``32 x 32 x 3`` uint8, row-major), so a
re-packed archive with the same pictures matches even though its bytes differ. The digest list
(``<path below tin/>\\t<digest>`` lines, sorted by path) is 11 MB for the 110,000 images, too large to
ship; the package ships its summary (``data/tinyimagenet32_digests.json``): the list's sha256 and one
sha256 per group (``train/<wnid>`` and ``val``), which locates a difference to a class.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import tarfile
from collections import defaultdict
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from avalanche_promptmoe.kit.arrays import decode_jpeg
from avalanche_promptmoe.kit.locate import KIT_HELP, KitError

__all__ = ["SHIPPED_DIGESTS", "image_digests", "digest_list", "digest_summary", "shipped_digest_summary",
           "compare_digests"]

SHIPPED_DIGESTS = "tinyimagenet32_digests.json"
_IMAGE_RE = re.compile(r"^tin/((train/(n\d+))/images/[^/]+|val/images/[^/]+)\.jpe?g$", re.IGNORECASE)


def image_digests(tar_path: str | Path, *, progress: bool = True) -> dict[str, str]:
    """``{path below tin/: sha256 of the decoded pixels}`` for every train and val image of a kit tar.

    Raises:
        KitError: the archive is unreadable or an image does not decode to 32x32 RGB.
    """
    from tqdm.auto import tqdm

    out: dict[str, str] = {}
    try:
        with tarfile.open(tar_path, "r|*") as tf, tqdm(desc="image digests", unit="img", disable=not progress) as bar:
            for member in tf:
                if member.isfile() and _IMAGE_RE.match(member.name):
                    pixels = decode_jpeg(tf.extractfile(member).read(), member.name)
                    out[member.name[len("tin/"):]] = hashlib.sha256(pixels.tobytes()).hexdigest()
                    bar.update()
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise KitError(f"corrupt or truncated kit archive {tar_path}: {exc}; {KIT_HELP}") from exc
    return out


def digest_list(digests: Mapping[str, str]) -> str:
    """The digest list as text: ``path\\tdigest`` lines sorted by path, newline-terminated."""
    return "".join(f"{name}\t{digests[name]}\n" for name in sorted(digests))


def _group(name: str) -> str:
    return "/".join(name.split("/")[:2]) if name.startswith("train/") else "val"


def digest_summary(digests: Mapping[str, str]) -> dict[str, Any]:
    """``{"n_images", "list_sha256", "groups": {group: sha256 of its lines}}`` of a digest table."""
    lines: dict[str, list[str]] = defaultdict(list)
    for name in sorted(digests):
        lines[_group(name)].append(f"{name}\t{digests[name]}\n")
    text = digest_list(digests)
    return {
        "format": 1,
        "n_images": len(digests),
        "list_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "groups": {g: hashlib.sha256("".join(v).encode()).hexdigest() for g, v in sorted(lines.items())},
    }


def shipped_digest_summary() -> dict[str, Any]:
    """The digest summary of the shipped kit v1's images (package data)."""
    return json.loads(resources.files("avalanche_promptmoe.kit").joinpath("data", SHIPPED_DIGESTS).read_text())


def compare_digests(summary: Mapping[str, Any], reference: Mapping[str, Any]) -> list[str]:
    """The groups (``train/<wnid>``, ``val``) whose images differ between two summaries, plus
    ``missing:<group>`` / ``extra:<group>``; empty when the lists are identical."""
    if summary.get("list_sha256") == reference.get("list_sha256"):
        return []
    ours, theirs = summary.get("groups", {}), reference.get("groups", {})
    diff = [g for g in sorted(set(ours) & set(theirs)) if ours[g] != theirs[g]]
    diff += [f"missing:{g}" for g in sorted(set(theirs) - set(ours))]
    diff += [f"extra:{g}" for g in sorted(set(ours) - set(theirs))]
    return diff or ["(same groups, different lists)"]
