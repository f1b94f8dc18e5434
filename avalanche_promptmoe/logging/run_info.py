"""What a run records about itself: its config flattened to MLflow params, valid keys, the git
commit and package versions."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MAX_KEY = 250
_PROJECT_DIR = Path(__file__).resolve().parents[2]


def sanitize_key(name: str) -> str:
    """Maps any string to a valid MLflow metric/param key (``[A-Za-z0-9_-. /]``, no ``..``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name))
    parts = ["_" + p[1:] if p.startswith(".") else p for p in cleaned.split("/") if p.strip()]
    return "/".join(parts)[:MAX_KEY].rstrip("/") or "_"


def to_dict(cfg: Any) -> dict[str, Any]:
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"config must be a mapping, a dataclass or have to_dict(), got {type(cfg).__name__}")


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flattens nested mappings (and dataclasses) to ``{"a.b.c": "value"}``; lists become JSON."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if (is_dataclass(value) and not isinstance(value, type)) or isinstance(value, Mapping):
            nested = to_dict(value)
            flat.update(flatten_config(nested, name) if nested else {name: "{}"})
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def git_commit() -> str:
    if not (_PROJECT_DIR / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_PROJECT_DIR, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
