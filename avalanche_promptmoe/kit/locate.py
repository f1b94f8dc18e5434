"""Where the offline kit is: file names, environment variables, the search order, :class:`KitError`.

The kit is a folder holding ``tinyimagenet32-jpeg.tar.xz`` (Tiny-ImageNet-200 at 32x32),
``reference_vit.pth`` (a small timm ViT pretrained on the 100 *upstream* classes) and
``reference_vit.json`` (how to rebuild it, the normalization, the class split). It is looked for in
this order: ``$AVALANCHE_PROMPTMOE_KIT``; ``../shared/data`` beside a source checkout; the user
cache folder ``<cache>/kit`` (where ``python -m avalanche_promptmoe.kit build`` writes by default).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "KIT_ENV_VAR",
    "CACHE_ENV_VAR",
    "KIT_TAR_NAME",
    "KIT_META_NAME",
    "KIT_WEIGHTS_NAME",
    "KIT_HELP",
    "KitError",
    "default_kit_dir",
    "default_cache_dir",
    "user_kit_dir",
    "resolve_kit_dir",
]

KIT_ENV_VAR = "AVALANCHE_PROMPTMOE_KIT"
CACHE_ENV_VAR = "AVALANCHE_PROMPTMOE_CACHE"
KIT_TAR_NAME = "tinyimagenet32-jpeg.tar.xz"
KIT_META_NAME = "reference_vit.json"
KIT_WEIGHTS_NAME = "reference_vit.pth"

KIT_HELP = (
    f"expected the offline kit (docs/DATA.md): a folder holding {KIT_TAR_NAME}, {KIT_META_NAME} and "
    f"{KIT_WEIGHTS_NAME}; pass its path, set ${KIT_ENV_VAR}, or rebuild it from public sources with "
    "`python -m avalanche_promptmoe.kit build` (README: 'Rebuilding the kit')"
)


class KitError(FileNotFoundError):
    """The offline kit is missing, incomplete or corrupt."""


def default_cache_dir() -> Path:
    """Return the array cache folder: ``$AVALANCHE_PROMPTMOE_CACHE`` if set, else ``~/.cache/avalanche_promptmoe``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "avalanche_promptmoe"


def user_kit_dir() -> Path:
    """The user's kit folder, ``<default_cache_dir()>/kit``: where ``kit build`` writes by default."""
    return default_cache_dir() / "kit"


def _checkout_kit_dir() -> Path:
    """``<project root>/../shared/data``; the project root is the parent of the package folder."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_kit_dir() -> Path:
    """Return the kit folder: ``$AVALANCHE_PROMPTMOE_KIT`` if set; else ``../shared/data`` beside a
    source checkout if it holds the kit's JSON; else :func:`user_kit_dir` (which may not exist yet:
    the loaders then raise :class:`KitError` saying how to get a kit)."""
    env = os.environ.get(KIT_ENV_VAR)
    if env:
        return Path(env).expanduser()
    checkout = _checkout_kit_dir()
    if (checkout / KIT_META_NAME).is_file():
        return checkout
    return user_kit_dir()


def resolve_kit_dir(kit_dir: str | os.PathLike | None) -> Path:
    """The kit folder from a folder, a file in it, or ``None`` (:func:`default_kit_dir`).

    Raises:
        KitError: the folder does not exist.
    """
    kit = default_kit_dir() if kit_dir is None else Path(kit_dir).expanduser()
    if kit.is_file():  # the tar or the json itself
        kit = kit.parent
    if not kit.is_dir():
        raise KitError(f"kit folder not found: {kit}; {KIT_HELP}")
    return kit
