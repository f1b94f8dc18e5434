"""The kit protocol's bounds, stored with each kit: where a method's FAA stands.

For a kit (its archive's and weights' sha256) and a protocol (``n_experiences``, class-order
``seed``, ``train_per_class``, ``test_per_class``) three figures frame a prompt method's FAA:

* ``seq``: sequential fine-tuning of the prompt and head (the lower bound);
* ``ncm``: the training-free nearest-class-mean classifier on frozen features (cosine,
  class-incremental; its FAA is the mean of the last row of its accuracy matrix);
* ``joint_probe``: a linear head on frozen features of all classes at once (task-averaged).

They are measured once per kit and protocol: ``python -m avalanche_promptmoe.kit build`` writes
``kit_bounds.json`` beside a rebuilt kit; the shipped kit's figures (read-only shared data) are
package data, ``data/kit_bounds.json``, with the command or document each came from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from avalanche_promptmoe.kit.files import load_kit_meta, sha256_file
from avalanche_promptmoe.kit.locate import KIT_WEIGHTS_NAME, KitError, resolve_kit_dir

__all__ = ["BOUNDS_FILE", "PROTOCOL_KEYS", "KitBounds", "kit_bounds", "protocol_key", "read_bounds_file",
           "class_means", "ncm_predict", "ncm_accuracy_matrix"]

BOUNDS_FILE = "kit_bounds.json"
PROTOCOL_KEYS = ("n_experiences", "seed", "train_per_class", "test_per_class")
Distance = Literal["cosine", "euclidean"]


@dataclass(frozen=True)
class KitBounds:
    """The three bounds of one kit and protocol (FAA as fractions; ``None`` = not measured)."""

    seq: float | None
    ncm: float | None
    joint_probe: float | None
    source: str = ""

    def as_dict(self) -> dict[str, float]:
        """``{"seq", "ncm", "joint_probe"}`` of the measured ones."""
        pairs = (("seq", self.seq), ("ncm", self.ncm), ("joint_probe", self.joint_probe))
        return {k: float(v) for k, v in pairs if v is not None}

    def describe(self, faa: float) -> str:
        """``"FAA 0.197 (seq 0.162 · NCM 0.212 · joint probe 0.224)"``."""
        names = {"seq": "seq", "ncm": "NCM", "joint_probe": "joint probe"}
        inner = " · ".join(f"{names[k]} {v:.3f}" for k, v in self.as_dict().items())
        return f"FAA {faa:.3f} ({inner})" if inner else f"FAA {faa:.3f}"


def protocol_key(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a benchmark protocol (``split_tinyimagenet32(...).protocol``) the bounds depend on."""
    return {k: protocol.get(k) for k in PROTOCOL_KEYS}


def read_bounds_file(path: str | os.PathLike | Any) -> list[dict[str, Any]]:
    """The entries of a ``kit_bounds.json`` (``{"entries": [{tar_sha256, weights_sha256, protocol,
    bounds, sources}]}``). Raises :class:`KitError` naming the file if it is not of that form."""
    try:
        entries = json.loads(path.read_text() if hasattr(path, "read_text") else Path(path).read_text())["entries"]
        valid = isinstance(entries, list) and all(isinstance(e["bounds"], dict) for e in entries)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KitError(f"{path}: not a kit bounds file ({{'entries': [...]}} with bounds): {exc}") from exc
    if not valid:
        raise KitError(f"{path}: not a kit bounds file: 'entries' must be a list of objects with 'bounds'")
    return entries


def _candidates(kit: Path) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if (kit / BOUNDS_FILE).is_file():
        out.append((str(kit / BOUNDS_FILE), kit / BOUNDS_FILE))
    out.append((f"avalanche_promptmoe/kit/data/{BOUNDS_FILE}",
                resources.files("avalanche_promptmoe.kit").joinpath("data", BOUNDS_FILE)))
    return out


def kit_bounds(protocol: Mapping[str, Any], kit_dir: str | os.PathLike | None = None) -> KitBounds | None:
    """The stored bounds of this kit and protocol, or ``None`` when they were never measured.

    Args:
        protocol: a Split Tiny-ImageNet-32 benchmark's ``protocol`` (its ``tar_sha256`` and
            :data:`PROTOCOL_KEYS`; ``normalize`` must be true, as every bound was measured so).
        kit_dir: the kit folder (its weights are hashed); ``None`` = the default kit.
    """
    if not protocol.get("normalize", True) or not protocol.get("tar_sha256"):
        return None
    kit = resolve_kit_dir(kit_dir)
    weights = kit / load_kit_meta(kit).get("weights", KIT_WEIGHTS_NAME)
    if not weights.is_file():
        return None
    weights_sha, key = sha256_file(weights), protocol_key(protocol)
    for source, path in _candidates(kit):
        for entry in read_bounds_file(path):
            if (entry.get("tar_sha256") == protocol["tar_sha256"] and entry.get("weights_sha256") == weights_sha
                    and protocol_key(entry.get("protocol", {})) == key):
                b = entry["bounds"]
                return KitBounds(b.get("seq"), b.get("ncm"), b.get("joint_probe"), source)
    return None


# --------------------------------------------------------------------------- nearest class mean


def class_means(features: Any, labels: Any, classes: Sequence[int]) -> Any:
    """``(len(classes), D)`` float64 mean training feature of each class, in the order of ``classes``.

    Raises ``ValueError`` naming a class with no training sample."""
    import torch

    means = []
    for c in classes:
        rows = features[labels == c]
        if len(rows) == 0:
            raise ValueError(f"class {c}: no training sample to compute its mean from")
        means.append(rows.double().mean(0))
    return torch.stack(means)


def ncm_predict(features: Any, means: Any, classes: Sequence[int], distance: Distance = "cosine") -> Any:
    """Class id of the nearest mean for each row of ``features (N, D)``; ``means (C, D)`` in the
    order of ``classes``. ``cosine``: largest cosine similarity; ``euclidean``: smallest L2 distance
    (ties towards the earlier class)."""
    import torch

    x = features.double()
    if distance == "cosine":
        score = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(means, dim=1).T
    elif distance == "euclidean":
        score = -torch.cdist(x, means)
    else:
        raise ValueError(f"distance: expected 'cosine' or 'euclidean', got {distance!r}")
    return torch.as_tensor(list(classes), dtype=torch.long)[score.argmax(1)]


def ncm_accuracy_matrix(train: Sequence[tuple[Any, Any]], test: Sequence[tuple[Any, Any]],
                        classes: Sequence[Sequence[int]], distance: Distance = "cosine") -> Any:
    """Class-incremental NCM: ``A[t, i]`` = accuracy on task ``i``'s test set with the means of the
    classes of tasks ``0..t``; ``(T, T)`` float64, NaN above the diagonal (never evaluated).

    Args:
        train, test: per task, ``(features (N, D), labels (N,))``.
        classes: per task, its class ids.
        distance: ``"cosine"`` or ``"euclidean"``.
    """
    import numpy as np
    import torch

    if not len(train) == len(test) == len(classes):
        raise ValueError(f"train, test, classes: one entry per task, got {len(train)}, {len(test)}, {len(classes)}")
    T = len(classes)
    means = [class_means(x, y, cs) for (x, y), cs in zip(train, classes)]
    acc = np.full((T, T), np.nan)
    for t in range(T):
        seen = [c for cs in classes[: t + 1] for c in cs]
        m = torch.cat(means[: t + 1])
        for i in range(t + 1):
            x, y = test[i]
            acc[t, i] = float((ncm_predict(x, m, seen, distance) == y).double().mean())
    return acc
