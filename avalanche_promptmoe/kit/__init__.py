"""The offline kit (``docs/DATA.md``): Tiny-ImageNet-32 and the reference ViT, in one place.

* :mod:`~avalanche_promptmoe.kit.locate` — where the kit is (``$AVALANCHE_PROMPTMOE_KIT``, then
  ``../shared/data`` beside a source checkout, then the user cache folder) and :class:`KitError`;
* :mod:`~avalanche_promptmoe.kit.files` — the JSON and the sha256 of every file;
* :mod:`~avalanche_promptmoe.kit.arrays` — the images decoded to cached arrays;
* :mod:`~avalanche_promptmoe.kit.benchmark` — :func:`split_tinyimagenet32`;
* :mod:`~avalanche_promptmoe.kit.backbone` — :func:`load_reference_backbone` (through the engine);
* :mod:`~avalanche_promptmoe.kit.bounds` — the protocol bounds stored with each kit;
* ``python -m avalanche_promptmoe.kit build --out DIR`` — rebuild the kit from public sources
  (:mod:`~avalanche_promptmoe.kit.build`, :mod:`~avalanche_promptmoe.kit.sources`,
  :mod:`~avalanche_promptmoe.kit.digests`, :mod:`~avalanche_promptmoe.kit.pretrain`).

The core modules import only torch, numpy, PIL and (the backbone) the engine; the build imports the
training code it needs lazily, as an experiment script would.
"""

from avalanche_promptmoe.kit.arrays import load_kit_arrays
from avalanche_promptmoe.kit.backbone import load_reference_backbone
from avalanche_promptmoe.kit.benchmark import ToModelInput, reference_transform, split_tinyimagenet32
from avalanche_promptmoe.kit.bounds import KitBounds, kit_bounds
from avalanche_promptmoe.kit.files import KIT_V1_SHA256, kit_checksums, load_kit_meta, verify_kit
from avalanche_promptmoe.kit.locate import (
    CACHE_ENV_VAR,
    KIT_ENV_VAR,
    KIT_META_NAME,
    KIT_TAR_NAME,
    KIT_WEIGHTS_NAME,
    KitError,
    default_cache_dir,
    default_kit_dir,
    user_kit_dir,
)

__all__ = [
    "CACHE_ENV_VAR",
    "KIT_ENV_VAR",
    "KIT_META_NAME",
    "KIT_TAR_NAME",
    "KIT_V1_SHA256",
    "KIT_WEIGHTS_NAME",
    "KitBounds",
    "KitError",
    "ToModelInput",
    "default_cache_dir",
    "default_kit_dir",
    "kit_bounds",
    "kit_checksums",
    "load_kit_arrays",
    "load_kit_meta",
    "load_reference_backbone",
    "reference_transform",
    "split_tinyimagenet32",
    "user_kit_dir",
    "verify_kit",
]
