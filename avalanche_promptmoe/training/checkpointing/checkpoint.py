"""Our own checkpoint file format: versioned, written atomically, read with ``weights_only=True``.

Avalanche's dill-based checkpoints break on torch 2.14 (ECOSYSTEM.md §A2.3), so the strategy
assembles a plain payload (trainable state, optimizer, plugin ``state_dict()``s, RNG states,
benchmark position, config) and this module writes and reads it. Torch only; no Avalanche import.

File layout (version 2): one ``torch.save`` of the header dict ``{"format": CHECKPOINT_FORMAT,
"version": 2, "library_version": ..., "digest": "sha256:<hex>", "payload": <bytes>}`` where
``payload`` is itself the ``torch.save`` bytes of the caller's dict and ``digest`` its SHA-256. The
digest is checked before the payload is unpickled (again with ``weights_only=True``), so flipped
bytes, a truncated file or garbage are a :class:`CheckpointError` naming the file — torch does not
check the zip CRCs itself.

Version 1 (no digest: the payload keys next to ``format``/``version``/``library_version`` in one
``torch.save``) is refused by :func:`load_checkpoint_file` with the version it needs;
:func:`migrate_checkpoint_file` re-writes such a file as version 2 (explicitly, after reading it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import random
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

import avalanche_promptmoe as _package
from avalanche_promptmoe.paths import make_directory, user_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint_file",
    "migrate_checkpoint_file",
    "restore_rng_state",
    "save_checkpoint_file",
]

CHECKPOINT_FORMAT: Final[str] = "avalanche_promptmoe.checkpoint"
CHECKPOINT_VERSION: Final[int] = 2
_HEADER_KEYS: Final[tuple[str, ...]] = ("format", "version", "library_version", "digest", "payload")

# Types torch.load(weights_only=True) reads back; exact types only (subclasses such as NamedTuple,
# IntEnum or defaultdict pickle a class reference that weights_only refuses).
_SCALAR_TYPES: Final = (type(None), bool, int, float, complex, str, bytes)
_TORCH_ATOMS: Final = (torch.dtype, torch.device)
_TENSOR_TYPES: Final = (torch.Tensor, torch.nn.Parameter)


class CheckpointError(ValueError):
    """A file that exists but is not a checkpoint this library can read."""


# --------------------------------------------------------------------------- payload validation
def _make_safe(value: Any, key_path: str, open_containers: set[int]) -> Any:
    """Returns ``value`` with numpy values converted to torch / Python, or raises TypeError."""
    kind = type(value)
    if kind in _SCALAR_TYPES or kind in _TORCH_ATOMS or kind in _TENSOR_TYPES:
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{key_path}: numpy array of dtype object cannot be stored in a checkpoint")
        # Converted automatically: it comes back from load_checkpoint_file as a torch.Tensor.
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()  # numpy scalar -> the Python scalar of the same value
    if kind not in (dict, OrderedDict, list, tuple, torch.Size):
        raise TypeError(
            f"{key_path}: value of type {kind.__module__}.{kind.__qualname__} is not weights_only-safe; "
            "store tensors, dicts, lists, tuples, str, int, float, bool or None (convert it first)"
        )
    if id(value) in open_containers:
        raise ValueError(f"{key_path}: the payload contains a reference cycle")
    open_containers.add(id(value))
    try:
        if kind in (dict, OrderedDict):
            out = kind()
            for key, item in value.items():
                if type(key) not in _SCALAR_TYPES:
                    raise TypeError(
                        f"{key_path}: dict key {key!r} of type {type(key).__name__} is not allowed; "
                        "use str, int, float, bool or None keys"
                    )
                out[key] = _make_safe(item, f"{key_path}[{key!r}]", open_containers)
            return out
        if kind is torch.Size:
            return value
        items = [_make_safe(item, f"{key_path}[{i}]", open_containers) for i, item in enumerate(value)]
        return items if kind is list else tuple(items)
    finally:
        open_containers.discard(id(value))


def _fsync_directory(directory: Path) -> None:
    """Makes a rename durable on POSIX; a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- save / load
def save_checkpoint_file(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Writes ``payload`` plus the format header to ``path`` atomically.

    The file is written to a temporary file in the same directory, flushed and fsynced, then
    moved over ``path`` with ``os.replace``: a crash leaves either the old file or the new one,
    never a partial file, and the temporary file is removed on failure. Parent directories are
    created.

    Values must be weights_only-safe: tensors (and ``nn.Parameter``), dicts / OrderedDicts with
    str, int, float, bool or None keys, lists, tuples, ``torch.Size``, ``torch.dtype``,
    ``torch.device``, str, bytes, int, float, complex, bool, None. numpy arrays are converted to
    tensors and numpy scalars to Python scalars automatically (they load back as such).

    Args:
        path: destination file.
        payload: the checkpoint content; must not use the header keys ``format``, ``version``,
            ``library_version``, ``digest``, ``payload``. Not modified.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``payload`` is not a dict, or a value or key is not weights_only-safe (the
            message names its key path, e.g. ``payload['optimizer']['state'][0]``).
        ValueError: ``payload`` uses a header key or contains a reference cycle.
    """
    if type(payload) not in (dict, OrderedDict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    clashes = [key for key in _HEADER_KEYS if key in payload]
    if clashes:
        raise ValueError(f"payload must not contain the reserved header keys {clashes}")
    document: dict[str, Any] = _make_safe(payload, "payload", set())
    buffer = io.BytesIO()
    torch.save(document, buffer)
    body = buffer.getvalue()
    header = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "library_version": str(_package.__version__),
        "digest": _digest(body),
        "payload": body,
    }

    path = user_path(path)
    make_directory(path.parent, "save_checkpoint")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(header, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, (OSError, RuntimeError)) and _out_of_space(err, path.parent, len(body)):
            raise OSError(
                errno.ENOSPC, f"save_checkpoint: {path}: no space left on the device ({len(body) / 1e6:.1f} MB to "
                f"write); free some space or choose another path (the previous file, if any, is unchanged)"
            ) from err
        raise
    _fsync_directory(path.parent)
    return path


def _out_of_space(err: BaseException, directory: Path, size: int) -> bool:
    """Whether a failed write ran out of disk space (torch's zip writer reports it as "unexpected pos")."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(directory).free < size + (1 << 20)
    except OSError:
        return False


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _torch_load(source: Any, path: Path, map_location: Any, what: str) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except (IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... here
        raise CheckpointError(
            f"{path} is corrupt or not a checkpoint ({what}: torch.load(weights_only=True) failed: "
            f"{_first_line(err)})"
        ) from err


def _read_header(path: Path, map_location: Any) -> dict[str, Any]:
    """The outer document, checked for the format tag and a known version (not the digest)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    document = _torch_load(path, path, map_location, "header")
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise CheckpointError(
            f"{path} is a foreign file: a torch file without the format tag "
            f"{CHECKPOINT_FORMAT!r} (found {found!r}); it was not written by save_checkpoint_file"
        )
    version = document.get("version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path} is corrupt or not a checkpoint: invalid format version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version} (written by avalanche_promptmoe "
            f"{document.get('library_version')}), newer than version {CHECKPOINT_VERSION} that this "
            f"avalanche_promptmoe {_package.__version__} reads; upgrade the library"
        )
    return document


def load_checkpoint_file(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Reads a file written by :func:`save_checkpoint_file`, verifying its SHA-256 digest first.

    Both the header and the payload are read with ``torch.load(weights_only=True)``; the payload is
    unpickled only after its digest matched.

    Args:
        path: checkpoint file.
        map_location: passed to ``torch.load`` (default: every tensor on the CPU).

    Returns:
        The payload dict plus the header keys ``format``, ``version``, ``library_version`` and
        ``digest``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is corrupt, truncated or altered (digest mismatch), or not a torch
            file; a torch file without our format tag ("foreign file"); a format version newer than
            :data:`CHECKPOINT_VERSION`; or version 1 (no digest; it names
            :func:`migrate_checkpoint_file`).
    """
    path = user_path(path)
    header = _read_header(path, map_location)
    version = header["version"]
    if version < CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version} (written by avalanche_promptmoe "
            f"{header.get('library_version')}, without an integrity digest); this library reads version "
            f"{CHECKPOINT_VERSION}. Convert it once with "
            f"avalanche_promptmoe.training.checkpoint.migrate_checkpoint_file({str(path)!r}) "
            f"(it cannot be verified: only do so for a file you trust)"
        )
    body, digest = header.get("payload"), header.get("digest")
    if type(body) is not bytes or type(digest) is not str:
        raise CheckpointError(f"{path} is corrupt: the header lacks its payload bytes or digest")
    actual = _digest(body)
    if actual != digest:
        raise CheckpointError(
            f"{path} is corrupt: the payload's digest {actual[:19]}... does not match the recorded "
            f"{digest[:19]}... (the file was altered or damaged after it was written)"
        )
    payload = _torch_load(io.BytesIO(body), path, map_location, "payload")
    if type(payload) not in (dict, OrderedDict):
        raise CheckpointError(f"{path} is corrupt: the payload is a {type(payload).__name__}, not a dict")
    return {
        **payload,
        "format": CHECKPOINT_FORMAT,
        "version": version,
        "library_version": header.get("library_version"),
        "digest": digest,
    }


def migrate_checkpoint_file(
    path: str | os.PathLike[str], destination: str | os.PathLike[str] | None = None
) -> Path:
    """Re-writes an older-format checkpoint (version 1, no digest) as the current version.

    The old file is read with ``weights_only=True``; its content cannot be verified (version 1 had
    no digest), so migrate only files you trust. A current-version file is verified and copied.

    Args:
        path: the old checkpoint.
        destination: where to write (default: ``path`` itself, replaced atomically).

    Returns:
        The path written.

    Raises:
        CheckpointError: ``path`` is not a checkpoint of a known version.
    """
    path = user_path(path)
    header = _read_header(path, "cpu")
    if header["version"] == CHECKPOINT_VERSION:
        payload = load_checkpoint_file(path)
        for key in ("format", "version", "library_version", "digest"):
            payload.pop(key, None)
    else:  # version 1: the payload keys sit next to the header keys
        payload = {k: v for k, v in header.items() if k not in ("format", "version", "library_version")}
    return save_checkpoint_file(destination if destination is not None else path, payload)


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """Captures the global RNGs as weights_only-safe values.

    Returns:
        ``{"python": {"version": int, "state": int64 tensor (625,), "gauss_next": float | None},
        "numpy": {"bit_generator": str, "keys": int64 tensor (624,), "pos": int, "has_gauss":
        int, "cached_gaussian": float}, "torch": uint8 tensor, "torch_cuda": [uint8 tensor per
        device]}``; ``"torch_cuda"`` only when CUDA is available.
    """
    py_version, py_internal, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            # 624 uint32 words + position; every value < 2**32 fits int64 exactly.
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "bit_generator": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores the global RNGs from :func:`capture_rng_state`'s output.

    CUDA states are restored when present and CUDA is available; a checkpoint with CUDA states
    loaded without CUDA, or with a different number of devices, restores what it can and warns.

    Raises:
        KeyError: ``state`` lacks ``python``, ``numpy`` or ``torch``.
    """
    missing = [key for key in ("python", "numpy", "torch") if key not in state]
    if missing:
        raise KeyError(f"RNG state lacks {missing}; expected the output of capture_rng_state()")
    py = state["python"]
    internal = tuple(int(v) for v in torch.as_tensor(py["state"]).tolist())
    gauss_next = py["gauss_next"]
    random.setstate((int(py["version"]), internal, None if gauss_next is None else float(gauss_next)))

    npy = state["numpy"]
    keys = torch.as_tensor(npy["keys"]).cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (
            str(npy["bit_generator"]),
            keys,
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
    )

    torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))

    cuda_states = state.get("torch_cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        warnings.warn(
            "RNG state holds CUDA generator states but CUDA is not available; skipped them", stacklevel=2
        )
        return
    count = torch.cuda.device_count()
    if len(cuda_states) != count:
        warnings.warn(
            f"RNG state holds {len(cuda_states)} CUDA generator states but {count} devices are visible; "
            f"restoring the first {min(count, len(cuda_states))}",
            stacklevel=2,
        )
    for device, cuda_state in enumerate(cuda_states[:count]):
        torch.cuda.set_rng_state(torch.as_tensor(cuda_state).cpu().to(torch.uint8), device)
