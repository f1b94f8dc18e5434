"""``ModulatorProbePlugin``: what Hash's history-aware modulator does, per task and prompted layer.

Per training experience t and prompted layer l (F = the frequent set ``A_(t,l)`` fixed when t starts):

* ``spread_start`` / ``spread_end`` — mean over the samples of ``max_e s − min_e s``, the router
  scores before the penalty in ``score_reading`` units, on the first / last training batch of t
  (compare with δ: a penalty much larger than the spread removes F from every top-K);
* ``train_frequent_share`` — share of t's training top-K selections that fall in F;
* ``test_frequent_share`` — the same on the test samples of experience t evaluated after training
  it (each sample's F is that of the task TII routed it to); ``test_frequent_share_seen`` — on every
  evaluated experience;
* ``frequent_drift`` / ``other_drift`` — mean L2 norm of the change of an expert's key and value
  rows over t, for the experts in F / not in F (NaN where the set is empty). HGM should bring the
  first to about α × what it is with α = 1.

Records are kept in ``records`` (one dict per experience, lists indexed by prompted layer; the
runner writes them to ``summary.json``) and sent to the strategy's loggers as
``hash_modulator/<figure>/layer<l>`` at x = t. Statistics stay on the device until the end of the
experience (no host sync per step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor

__all__ = ["ModulatorProbePlugin"]

_FIGURES = ("spread_start", "spread_end", "train_frequent_share", "test_frequent_share",
            "test_frequent_share_seen", "frequent_drift", "other_drift")


def _spreads(model: Any) -> Tensor:
    """Mean score spread per prompted layer ``(layers,)`` of the model's last forward."""
    return torch.stack([
        (s.amax(-1) - s.amin(-1)).float().mean() for s in (model.last_scores[layer] for layer in model.layers)
    ])


def _frequent_hits(model: Any, frequent_of: Any) -> tuple[Tensor, Tensor]:
    """Selections in the frequent set (on the model's device) and all selections (on the host: known
    from the shapes, so no per-step copy to the device) per layer ``(layers,)`` of the last forward;
    ``frequent_of(pos)`` gives the mask ``(E,)`` or ``(B, E)``."""
    hits, total = [], []
    for pos, layer in enumerate(model.layers):
        idx = model.last_routing[layer].indices  # (B, K)
        freq = frequent_of(pos)
        sel = freq[idx] if freq.dim() == 1 else freq.gather(-1, idx)
        hits.append(sel.sum())
        total.append(idx.numel())
    return torch.stack(hits).float(), torch.tensor(total, dtype=torch.float32)


def _row_drift(before: Tensor, after: Tensor, mask: Tensor) -> list[float]:
    """Mean over the masked experts of ``‖Δ row‖₂`` per layer; ``before/after (layers, E, ...)``."""
    norms = (after - before).flatten(2).norm(dim=-1)  # (layers, E)
    out = []
    for n, m in zip(norms, mask, strict=True):
        out.append(float(n[m].mean()) if bool(m.any()) else math.nan)
    return out


class ModulatorProbePlugin(SupervisedPlugin, supports_distributed=True):
    """Measures the score spread, frequent-set selection shares and the frequent experts' drift.

    Works with :class:`~.model.HashPromptModel` (``last_scores``, ``last_routing``,
    ``last_task_ids``, ``frequent``, ``task_frequent``, ``pool``). Add it after the strategy has
    fixed the task's frequent set (``prepare_task`` runs before the plugins' ``before_training_exp``).
    Under data parallelism each rank measures its own shard (rank 0's figures are the ones logged);
    the probe never changes training.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self._start: Tensor | None = None
        self._last: Tensor | None = None
        self._train = [None, None]
        self._test = {"current": [None, None], "seen": [None, None]}
        self._snapshot: tuple[Tensor, Tensor] | None = None
        self._frequent: Tensor | None = None
        self._eval_record: dict[str, Any] | None = None

    # -- training -----------------------------------------------------------------------------
    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._reset()
        model = strategy.model
        self._frequent = model.frequent.detach().clone()
        self._snapshot = (model.pool.keys.detach().clone(), model.pool.values.detach().clone())

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        model = strategy.model
        if self._frequent is None or not getattr(model, "last_routing", None):
            return
        with torch.no_grad():
            spread = _spreads(model)
            self._start = spread if self._start is None else self._start
            self._last = spread
            hits, total = _frequent_hits(model, lambda pos: self._frequent[pos].to(spread.device))
            self._train = _accumulate(self._train, hits, total)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._snapshot is None or self._frequent is None:
            return
        model = strategy.model
        freq = self._frequent.cpu()
        keys0, values0 = self._snapshot
        before = torch.cat([keys0.flatten(2), values0.flatten(2)], dim=-1).cpu()
        after = torch.cat([model.pool.keys.detach().flatten(2), model.pool.values.detach().flatten(2)], -1).cpu()
        n_layers = freq.shape[0]
        nan = [math.nan] * n_layers
        record: dict[str, Any] = {
            "experience": len(self.records),
            "frequent": [torch.nonzero(m).flatten().tolist() for m in freq],
            "spread_start": _tolist(self._start, nan),
            "spread_end": _tolist(self._last, nan),
            "train_frequent_share": _share(self._train, nan),
            "test_frequent_share": nan,
            "test_frequent_share_seen": nan,
            "frequent_drift": _row_drift(before, after, freq),
            "other_drift": _row_drift(before, after, ~freq),
        }
        self.records.append(record)
        self._eval_record = record
        self._snapshot = None
        self._log(strategy, record, ("spread_start", "spread_end", "train_frequent_share", "frequent_drift",
                                     "other_drift"))

    # -- evaluation ---------------------------------------------------------------------------
    def before_eval(self, strategy: Any, **kwargs: Any) -> None:
        self._test = {"current": [None, None], "seen": [None, None]}

    def after_eval_forward(self, strategy: Any, **kwargs: Any) -> None:
        model = strategy.model
        if self._eval_record is None or not getattr(model, "last_routing", None):
            return
        with torch.no_grad():
            tids = model.last_task_ids
            if isinstance(tids, Tensor):
                tids = tids.to(model.task_frequent.device).long()
            hits, total = _frequent_hits(model, lambda pos: model.task_frequent[tids, pos])
            self._test["seen"] = _accumulate(self._test["seen"], hits, total)
            if strategy.experience.current_experience == self._eval_record["experience"]:
                self._test["current"] = _accumulate(self._test["current"], hits, total)

    def after_eval(self, strategy: Any, **kwargs: Any) -> None:
        record = self._eval_record
        if record is None or self._test["seen"][1] is None:
            return
        nan = [math.nan] * len(record["frequent"])
        record["test_frequent_share"] = _share(self._test["current"], nan)
        record["test_frequent_share_seen"] = _share(self._test["seen"], nan)
        self._log(strategy, record, ("test_frequent_share", "test_frequent_share_seen"))

    # -- output -------------------------------------------------------------------------------
    def _log(self, strategy: Any, record: dict[str, Any], figures: tuple[str, ...]) -> None:
        evaluator = getattr(strategy, "evaluator", None)
        values = [
            MetricValue(self, f"hash_modulator/{fig}/layer{layer}", value, record["experience"])
            for fig in figures
            for layer, value in zip(strategy.model.layers, record[fig], strict=True)
            if math.isfinite(value)
        ]
        for logger in getattr(evaluator, "loggers", None) or []:
            logger.log_metrics(values)

    def state_dict(self) -> dict:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: dict) -> None:
        self.records = [dict(r) for r in state["records"]]


def _accumulate(acc: list, hits: Tensor, total: Tensor) -> list:
    return [hits, total] if acc[0] is None else [acc[0] + hits, acc[1] + total]


def _share(acc: list, default: list[float]) -> list[float]:
    if acc[1] is None:
        return default
    return (acc[0].cpu() / acc[1].clamp(min=1)).tolist()


def _tolist(t: Tensor | None, default: list[float]) -> list[float]:
    return default if t is None else t.tolist()
