"""What our plugins need from the model / strategy they are attached to, as ``typing.Protocol``\\ s.

Each plugin checks its protocol in ``before_training`` (:func:`require`), so a model that lacks a
member fails at once with a ``TypeError`` naming the plugin and the missing members, before any
training step — not with an ``AttributeError`` in the middle of an epoch.

=========================  ================================  ==========================================
plugin                     checked on                        protocol
=========================  ================================  ==========================================
``GradientScalingPlugin``  ``strategy.model``                :class:`ExpertGradModel`
``RoutingHistoryPlugin``   ``strategy.model`` (when it       :class:`RoutingRecordModel`
                           records training selections)
``PrototypeLossPlugin``    ``strategy.model``                :class:`PrototypeModel`
``PhaseSchedulerPlugin``   ``strategy`` (TII / TAP enabled)  :class:`TIIPhaseStrategy`,
                                                             :class:`TAPPhaseStrategy`
=========================  ================================  ==========================================

Any model (or strategy) with these members works: e.g. Avalanche's ``Naive`` with a user model that
defines ``expert_grad_targets()`` can take ``GradientScalingPlugin``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = [
    "ExpertGradModel",
    "PrototypeModel",
    "RoutingRecordModel",
    "TAPPhaseStrategy",
    "TIIPhaseStrategy",
    "protocol_members",
    "require",
]


@runtime_checkable
class ExpertGradModel(Protocol):
    """``expert_grad_targets()`` → ``[(param, frequent)]``: ``param`` shaped ``(layers, E, ...)``,
    ``frequent`` bool ``(layers, E)``; the plugin scales ``param.grad`` where ``frequent``."""

    def expert_grad_targets(self) -> Sequence[tuple[nn.Parameter, Tensor]]: ...


@runtime_checkable
class RoutingRecordModel(Protocol):
    """``layers``: the prompted block indices (position ``i`` = usage row ``i``); ``last_routing``:
    ``{layer: RoutingOutput}`` of the last forward (``.indices`` ``(B, K)`` or ``(B, H, K)``)."""

    layers: Sequence[int]
    last_routing: Mapping[int, Any]


@runtime_checkable
class PrototypeModel(Protocol):
    """``prefix_keys()`` → ``(layers, E, H, Dh)``; ``frequent_mask()`` → bool ``(layers, H, E)``;
    ``top_k``: K."""

    top_k: int

    def prefix_keys(self) -> Tensor: ...

    def frequent_mask(self) -> Tensor: ...


@runtime_checkable
class TIIPhaseStrategy(Protocol):
    """A strategy that trains task-identity inference before each experience (``training.hide``)."""

    def run_tii_phase(self) -> None: ...


@runtime_checkable
class TAPPhaseStrategy(Protocol):
    """A strategy that aligns its head after each experience (``training.hide``)."""

    def run_tap_phase(self) -> None: ...


def protocol_members(protocol: type) -> list[str]:
    """The members a protocol declares (annotated attributes and public methods), sorted."""
    names = set(protocol.__dict__.get("__annotations__", {}))
    names.update(n for n, v in protocol.__dict__.items() if callable(v) and not n.startswith("_"))
    return sorted(names)


def require(plugin: object, obj: object, protocols: Iterable[type], *, role: str = "model") -> None:
    """Raise ``TypeError`` naming ``plugin``, ``obj``'s type and the missing members unless ``obj``
    has every member of ``protocols``."""
    missing = [m for proto in protocols for m in protocol_members(proto) if not hasattr(obj, m)]
    if missing:
        names = ", ".join(p.__name__ for p in protocols)
        raise TypeError(
            f"{type(plugin).__name__}: the {role} ({type(obj).__name__}) lacks {missing}, which this plugin "
            f"needs (protocol {names} in avalanche_promptmoe.training.protocols); add them to the {role} "
            f"or drop the plugin"
        )
