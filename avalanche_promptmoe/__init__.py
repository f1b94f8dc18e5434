"""avalanche_promptmoe: sparse mixture-of-prompt-experts continual learning for Avalanche.

Strategies are exported lazily (a module ``__getattr__``) so that ``import avalanche_promptmoe.engine``
works where Avalanche and MLflow are not installed (DECISIONS.md §A1).
"""

from __future__ import annotations

import warnings

from ._lazy import lazy_exports

# Avalanche imports GEM, which imports qpsolvers; without a QP solver installed (we do not use GEM,
# and ``quadprog`` is not a dependency) qpsolvers warns "no QP solver found" at import. Only that
# warning, from that module, is silenced; every other warning (qpsolvers' included) stays on.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning, module=r"qpsolvers(\.|$)")

__version__ = "0.1.0"

_LAZY = {
    "PromptStrategyBase": "avalanche_promptmoe.training.base_strategy",
    "HashPromptStrategy": "avalanche_promptmoe.methods.hash.strategy",
    "SMoPEStrategy": "avalanche_promptmoe.methods.smope.strategy",
    "LayerGroupedPromptStrategy": "avalanche_promptmoe.methods.hlgp.strategy",
    "HiDePromptStrategy": "avalanche_promptmoe.methods.baselines.strategy",
    "LinearProbeStrategy": "avalanche_promptmoe.methods.baselines.strategy",
    "SequentialPromptStrategy": "avalanche_promptmoe.methods.baselines.strategy",
    "JointPromptStrategy": "avalanche_promptmoe.methods.baselines.strategy",
    "L2PStrategy": "avalanche_promptmoe.methods.l2p.strategy",
    "DualPromptStrategy": "avalanche_promptmoe.methods.dualprompt.strategy",
    "CODAPromptStrategy": "avalanche_promptmoe.methods.codaprompt.strategy",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
