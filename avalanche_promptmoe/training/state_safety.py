"""What keeps a strategy's state trustworthy (issue #22 items 1, 3, 4): finite-state checks (one
reduction), a copy of the trainable model that shares the frozen backbone (the pre-experience
snapshot and the dry run of ``resume_from``), and checks of the loggers a strategy is given.

Torch only (loggers by duck typing)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_loggers", "copy_sharing_backbone", "nonfinite_keys", "tensors_finite"]


def tensors_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every floating tensor is finite: one reduction and one host sync for all of them."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not flags:
        return True
    devices = {f.device for f in flags}
    if len(devices) > 1:
        flags = [f.cpu() for f in flags]
    return bool(torch.stack(flags).all())


def _floating_leaves(value: Any, prefix: str) -> Iterable[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            yield prefix, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _floating_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _floating_leaves(v, f"{prefix}[{i}]")


def nonfinite_keys(payload: Mapping[str, Any], sections: Sequence[str] = ("model_state", "method_state")) -> list[str]:
    """Keys of a checkpoint payload's ``sections`` that hold a non-finite value (``[]``: finite).
    Costs one reduction when everything is finite."""
    leaves = [(k, t) for s in sections for k, t in _floating_leaves(payload.get(s, {}), s)]
    if tensors_finite(t for _, t in leaves):
        return []
    return [k for k, t in leaves if not bool(torch.isfinite(t).all())]


def copy_sharing_backbone(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares its frozen backbone (``model.vit.backbone``), its RNG
    generators and every tensor that is not a parameter or buffer (forward caches such as
    ``last_features``, which may be non-leaf tensors that cannot be deep-copied)."""
    memo: dict[int, Any] = {id(t): t for t in model.vit.backbone.state_dict(keep_vars=True).values()}
    owned = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    for module in model.modules():
        for value in vars(module).values():
            for item in _transients(value):
                if id(item) not in owned:
                    memo[id(item)] = item
    return copy.deepcopy(model, memo)


def _transients(value: Any, depth: int = 0) -> Iterable[Any]:
    if isinstance(value, (Tensor, torch.Generator)):
        yield value
    elif depth < 3 and isinstance(value, Mapping):
        for v in value.values():
            yield from _transients(v, depth + 1)
    elif depth < 3 and isinstance(value, (list, tuple)):
        for v in value:
            yield from _transients(v, depth + 1)


def check_loggers(loggers: Sequence[Any]) -> None:
    """Each logger object once, and none closed (its run has ended).

    Raises:
        ValueError: a logger is listed twice (it would log every metric twice), or is closed (its
            metrics would be dropped and its final ones written into the ended run).
    """
    seen: set[int] = set()
    for lg in loggers:
        name = type(lg).__name__
        if id(lg) in seen:
            raise ValueError(f"loggers: the same {name} object is passed twice (it would log every metric twice); "
                             f"list each logger once")
        seen.add(id(lg))
        if getattr(lg, "closed", False) is True:
            run = getattr(lg, "run_id", None)
            raise ValueError(
                f"loggers: this {name} is closed (its run{f' {run}' if run else ''} ended with status "
                f"{getattr(lg, 'status', None)}); a new strategy needs a new {name} (or resume_from a checkpoint "
                f"of the old run with a new logger to continue it)")
