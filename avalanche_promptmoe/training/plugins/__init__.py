"""The library's Avalanche plugins: thin glue over plain functions (keyword-only, with state)."""

from .grad_scaling import GradientScalingPlugin
from .phase_scheduler import PhaseSchedulerPlugin
from .prototype_loss import PrototypeLossPlugin
from .routing_history import RoutingHistoryPlugin

__all__ = ["GradientScalingPlugin", "PhaseSchedulerPlugin", "PrototypeLossPlugin", "RoutingHistoryPlugin"]
