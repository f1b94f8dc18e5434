"""Strict JSON for reports and summaries (issue #22 case 10): undefined numbers (NaN, ±inf, e.g. the
accuracy matrix's upper triangle) are written as ``null``, so strict readers (JavaScript, dashboards)
accept the files; :func:`read_json` reads both these files and older ones with bare ``NaN``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["finite_or_null", "read_json", "strict_json"]


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (Python, numpy or 0-d tensor) replaced by ``None``, numpy
    / torch scalars as Python numbers and arrays as lists; mappings and sequences recursively."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist) and not isinstance(value, (str, bytes)):
        return finite_or_null(tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any, *, indent: int | None = 2, default: Any = str) -> str:
    """``json.dumps`` of :func:`finite_or_null` (``allow_nan=False``: the text is standard JSON)."""
    return json.dumps(finite_or_null(value), indent=indent, default=default, allow_nan=False)


def read_json(path: str | os.PathLike[str], *, null_as_nan: bool = False) -> Any:
    """Read a JSON file written by :func:`strict_json` or an older one with bare ``NaN`` / ``Infinity``.

    Args:
        null_as_nan: turn every ``null`` into ``float("nan")`` (for all-numeric summaries and matrices).
    """
    data = json.loads(Path(path).expanduser().read_text())
    return _nulls_to_nan(data) if null_as_nan else data


def _nulls_to_nan(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _nulls_to_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls_to_nan(v) for v in value]
    return value
