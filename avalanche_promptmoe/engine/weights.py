"""Strict checks of a ViT's weight file against the model timm built from it (issue #13 item 1).

timm loads a file through ``pretrained_cfg_overlay=dict(file=...)`` non-strictly when
``num_classes=0`` (the head is dropped, so ``strict=False``): a ResNet state dict, a state dict with a
``backbone.`` prefix or ``{}`` then leaves every tensor random without an error. These functions
read the file themselves and compare it with the built model:

* :func:`read_weight_file` — a torch / safetensors state dict (``weights_only=True``) or a JAX
  ``.npz``; anything else is a :class:`BackboneError` "not a PyTorch checkpoint" naming the file;
* :func:`check_architecture` — depth, width and patch implied by the file against the model (a
  forgotten ``backbone_kwargs`` is an error, not a resample);
* :func:`verify_loaded_weights` — after timm loaded: every backbone tensor of the model is in the
  file (after timm's own ``checkpoint_filter_fn``), with the same shape and the same values; the
  file has no unexpected tensors. Head and pre-logits keys are ignored (and listed in the log).

Imports only torch, numpy and timm (the engine rule).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "IGNORED_PREFIXES",
    "BackboneError",
    "check_architecture",
    "read_weight_file",
    "verify_loaded_weights",
    "verify_npz_weights",
]

log = logging.getLogger(__name__)

#: file keys that are not part of the backbone (classifier heads, pre-logits); ignored, logged
IGNORED_PREFIXES: tuple[str, ...] = ("head.", "head_dist.", "pre_logits.")
_SHOW = 5  # keys listed per kind in an error


class BackboneError(ValueError):
    """A backbone could not be built, is not a supported timm ViT, or its weights do not fit it."""


def _keys(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def read_weight_file(path: str | Path) -> dict[str, Any]:
    """The state dict of a ``.pth`` / ``.bin`` / ``.safetensors`` file (as timm reads it: the
    ``state_dict`` / ``model`` entry when nested, ``module.`` prefixes removed) or the arrays of an
    ``.npz`` (a dict name -> numpy array).

    Raises:
        BackboneError: the file is not a readable checkpoint (the message names it).
    """
    path = Path(path)
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as err:  # noqa: BLE001 - zip / format errors of any kind
            raise BackboneError(
                f"checkpoint_path: {path} is not a NumPy .npz weight file ({type(err).__name__}: {err})"
            ) from err
    from timm.models._helpers import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(err).splitlines()[0] if str(err) else ""
        raise BackboneError(
            f"checkpoint_path: {path} is not a PyTorch checkpoint (torch.load(weights_only=True) failed: "
            f"{type(err).__name__}: {first})"
        ) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(
            f"checkpoint_path: {path} is not a PyTorch checkpoint of tensors (it holds a "
            f"{type(state).__name__} with non-tensor values); pass a state dict"
        )
    return dict(state)


def _file_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
    """Depth, width and patch size a timm-layout ViT state dict implies (keys it lacks are absent)."""
    arch: dict[str, Any] = {}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        arch["depth"] = max(blocks) + 1
    w = state.get("patch_embed.proj.weight")
    if isinstance(w, torch.Tensor) and w.ndim == 4:
        arch["embed_dim"] = int(w.shape[0])
        arch["patch_size"] = (int(w.shape[2]), int(w.shape[3]))
    elif isinstance(state.get("cls_token"), torch.Tensor):
        arch["embed_dim"] = int(state["cls_token"].shape[-1])
    return arch


def _npz_architecture(arrays: Mapping[str, Any]) -> dict[str, Any]:
    arch: dict[str, Any] = {}
    blocks = {int(m.group(1)) for k in arrays if (m := re.search(r"encoderblock_(\d+)/", k))}
    if blocks:
        arch["depth"] = max(blocks) + 1
    kernel = next((v for k, v in arrays.items() if k.endswith("embedding/kernel")), None)
    if kernel is not None and kernel.ndim == 4:  # (ph, pw, in, D)
        arch["embed_dim"] = int(kernel.shape[3])
        arch["patch_size"] = (int(kernel.shape[0]), int(kernel.shape[1]))
    return arch


def _model_architecture(model: nn.Module) -> dict[str, Any]:
    patch = model.patch_embed.proj.weight.shape
    return dict(depth=len(model.blocks), embed_dim=int(model.embed_dim), patch_size=(int(patch[2]), int(patch[3])))


def check_architecture(model: nn.Module, file_arch: Mapping[str, Any], path: str | Path) -> None:
    """The depth, width and patch the file implies equal the model's.

    Raises:
        BackboneError: listing each difference as ``depth: file 12, model 8`` and the
            ``backbone_kwargs`` that would fit the file.
    """
    have = _model_architecture(model)
    diff = {k: (v, have[k]) for k, v in file_arch.items() if k in have and have[k] != v}
    if diff:
        listed = ", ".join(f"{k}: file {f}, model {m}" for k, (f, m) in diff.items())
        hint = ", ".join(f"{k}={f[0] if k == 'patch_size' else f}" for k, (f, _) in diff.items())
        raise BackboneError(
            f"checkpoint_path: {path} holds a ViT of another shape than the model ({listed}); "
            f"pass backbone_kwargs with {hint} (or the matching timm model name)"
        )


def _common_prefix_hint(unexpected: list[str], expected: set[str]) -> str:
    for key in unexpected:
        for exp in expected:
            if key.endswith("." + exp):
                prefix = key[: -len(exp)]
                return f"; the file's keys carry the prefix {prefix!r} — strip it (e.g. {key!r} -> {exp!r})"
    return ""


def verify_loaded_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                          *, check_values: bool = True) -> None:
    """Check that ``model`` (a timm ViT built from ``path``) holds every backbone tensor of ``state``.

    ``state`` goes through timm's ``checkpoint_filter_fn`` for ViTs first (as timm's own load does:
    key conversions, position-embedding resampling), then: model keys absent from the file are
    *missing*, file keys absent from the model *unexpected* (head / pre-logits keys excepted),
    shared keys of different shapes *mismatched*, and (``check_values``) shared keys whose values
    differ *not loaded*.

    Raises:
        BackboneError: naming the file and listing the first few keys of each kind with counts.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    raw = dict(state)
    check_architecture(model, _file_architecture(raw), path)
    try:
        filtered = checkpoint_filter_fn(dict(raw), model)
    except Exception:  # noqa: BLE001 - a foreign layout the filter cannot read: compare the raw keys
        filtered = raw
    ignored = sorted(k for k in filtered if k.startswith(IGNORED_PREFIXES))
    own = model.state_dict()
    wanted = {k for k in own if not k.startswith(IGNORED_PREFIXES)}
    given = {k for k in filtered if not k.startswith(IGNORED_PREFIXES)}
    missing = sorted(wanted - given)
    unexpected = sorted(given - wanted)
    mismatched = sorted(k for k in wanted & given if tuple(filtered[k].shape) != tuple(own[k].shape))
    differ: list[str] = []
    if check_values:
        differ = sorted(
            k for k in wanted & given
            if k not in mismatched and not torch.equal(own[k], filtered[k].to(own[k].dtype))
        )
    if missing or unexpected or mismatched or differ:
        parts = [f"{len(wanted) - len(missing) - len(mismatched) - len(differ)} of {len(wanted)} backbone "
                 f"tensors loaded"]
        if missing:
            parts.append(f"missing {len(missing)}: {_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_keys(unexpected)}")
        if mismatched:
            shapes = [f"{k} file {tuple(filtered[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
            parts.append(f"shape mismatch {len(mismatched)}: {_keys(shapes)}")
        if differ:
            parts.append(f"not loaded {len(differ)}: {_keys(differ)}")
        raise BackboneError(
            f"checkpoint_path: {path} does not fit the {type(model).__name__} ("
            + "; ".join(parts) + ")" + _common_prefix_hint(unexpected, wanted)
        )
    if ignored:
        log.info("backbone weights %s: ignored head/pre-logits keys %s", path, _keys(ignored))


def verify_npz_weights(model: nn.Module, arrays: Mapping[str, Any], path: str | Path) -> None:
    """A JAX ``.npz`` loaded by timm's own converter: the implied depth / width / patch must equal the
    model's (the converter walks the model's blocks, so a deeper file would load partially), and the
    class token must be the file's.

    Raises:
        BackboneError: the file is not a ViT npz, or its shape differs from the model's.
    """
    arch = _npz_architecture(arrays)
    if "embed_dim" not in arch or "depth" not in arch:
        raise BackboneError(
            f"checkpoint_path: {path} is not a JAX ViT .npz (no 'embedding/kernel' or 'encoderblock_N' arrays)"
        )
    check_architecture(model, arch, path)
    cls = next((v for k, v in arrays.items() if k.split("/")[-1] == "cls" and k.count("/") <= 2), None)
    if cls is not None and getattr(model, "cls_token", None) is not None:
        loaded = model.cls_token.detach().cpu().reshape(-1)
        if not torch.equal(loaded, torch.as_tensor(cls).to(loaded.dtype).reshape(-1)):
            raise BackboneError(f"checkpoint_path: {path} was not loaded into the model (its class token differs)")
