"""The journal and the Python-API logging of :class:`~.mlflow_logger.MLflowLogger` (a mixin).

Everything logged is journaled before it is sent: params (immutable: a changed value is refused
with a warning), scalars as MLflow ``Metric`` entries, and non-scalar values staged as files in the
logger's staging folder (``config.json``, ``accuracy_matrix/<name>.csv|.png``,
``expert_usage/<name>.csv|.png``, ``tensors|figures|images|text/...``, ``report.md|json``), so that a
fallback run can be complete (:mod:`.mlflow_run` sends the journal). The public ``log_*`` methods
and :meth:`~MLflowApiMixin.flush` are the Python API; every attribute is set in
``MLflowLogger.__init__``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric

from avalanche_promptmoe.jsonio import strict_json
from avalanche_promptmoe.logging.mlflow_store import slug
from avalanche_promptmoe.logging.run_info import flatten_config, sanitize_key, to_dict

__all__ = ["MLflowApiMixin"]

# the logger of MLflowLogger's module, so that logging settings made for it cover its mixins too
_log = logging.getLogger("avalanche_promptmoe.logging.mlflow_logger")

MAX_PARAM_VALUE = 6000  # characters of a param value; longer ones are truncated
_SUMMARY_METRICS = ("FAA", "CAA", "FFM", "FFM_HiDe")


def _is_running_metric(name: str) -> bool:
    """Minibatch (``*_MB``) and epoch-running (``*Running*``) metrics, skipped by default."""
    head = name.split("/", 1)[0]
    return head.endswith("_MB") or "Running" in head


def _is_accuracy_matrix(name: str) -> bool:
    return "Acc_Matrix" in name or name.startswith("TaskAccMatrix")


def _write_matrix_csv(path: Path, matrix: np.ndarray, row_name: str, col_prefix: str) -> None:
    """CSV with a header ``row_name,<col_prefix>0,...``; NaN cells are left empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([row_name, *(f"{col_prefix}{j}" for j in range(matrix.shape[1]))])
        for i, row in enumerate(matrix):
            writer.writerow([i, *("" if np.isnan(v) else f"{v:.6g}" for v in row)])


def _percent(value: float) -> str:
    return "" if np.isnan(value) else f"{100.0 * value:.2f}"

class MLflowApiMixin:
    """Journal of logged values and the Python-API ``log_*`` methods of :class:`~.mlflow_logger.MLflowLogger`."""

    # ------------------------------------------------------------------ public API
    def log_config(self, cfg: Mapping[str, Any] | Any) -> dict[str, str]:
        """Logs a resolved config: flattened params (``a.b.c``) plus a ``config.json`` artifact.

        MLflow params are immutable: a key already logged with another value keeps its first value
        (a warning names it); ``config.json`` always holds the latest config. Values longer than
        6000 characters are truncated in the params (not in ``config.json``).

        Args:
            cfg: mapping, dataclass or object with ``to_dict()``.

        Returns:
            The flattened params as logged.
        """
        data = to_dict(cfg)
        flat = self._add_params(flatten_config(data))
        text = json.dumps(data, indent=2, default=str)
        self._stage("config.json", lambda p: p.write_text(text))
        self._sync()
        return flat

    def log_expert_usage(
        self,
        counts: Any,
        name: str = "expert_usage",
        *,
        layers: Sequence[int | str] | None = None,
        title: str | None = None,
    ) -> None:
        """Logs expert selection counts as a heatmap PNG and a CSV (layers × experts).

        Args:
            counts: ``(layers, heads, experts)`` (summed over heads) or ``(layers, experts)``.
            name: artifact base name under ``expert_usage/``.
            layers: row labels (prompted block indices); default ``0 .. layers-1``.
            title: figure title (default ``name``).

        Raises:
            ValueError: ``counts`` is not 2-D or 3-D.
        """
        from avalanche_promptmoe.logging.plots import plot_expert_usage

        if isinstance(counts, torch.Tensor):
            counts = counts.detach().cpu().numpy()
        raw = np.array(counts, dtype=np.float64)
        if raw.ndim not in (2, 3):
            raise ValueError(f"counts must be (layers, heads, experts) or (layers, experts), got {raw.shape}")
        usage = raw.sum(axis=1) if raw.ndim == 3 else raw
        base = f"expert_usage/{slug(name)}"
        self._stage(f"{base}.csv", lambda p: _write_matrix_csv(p, usage, "layer", "expert_"))
        self._stage(f"{base}.png", lambda p: plot_expert_usage(raw, layers=layers, path=p, title=title or name))
        self._sync()

    def log_report(self, report: str | Mapping[str, Any], name: str = "report") -> None:
        """Logs a report as ``<name>.md`` and ``<name>.json``; it is also appended to ``report.md``.

        Args:
            report: markdown text, or a JSON-serialisable mapping.
            name: artifact base name.
        """
        payload: Any = dict(report) if isinstance(report, Mapping) else {"text": str(report)}
        if isinstance(report, Mapping):
            markdown = "\n".join([f"## {name}", "", *(f"- **{k}**: {v}" for k, v in report.items()), ""])
        else:
            markdown = str(report)
        self._reports[name] = (markdown, payload)
        self._stage(f"{slug(name)}.md", lambda p: p.write_text(markdown))
        self._stage(f"{slug(name)}.json", lambda p: p.write_text(strict_json(payload)))
        self._sync()

    def log_artifact_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Uploads an existing file or directory (e.g. a checkpoint) to the run.

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        local = Path(path).resolve()
        if not local.exists():
            raise FileNotFoundError(f"artifact file {str(local)!r} does not exist")
        self._files.append((local, artifact_path))
        self._sync()

    def flush(self) -> None:
        """Renders the latest accuracy matrices and sends every buffered metric and artifact."""
        self._render_matrices()
        self._sync()

    # ------------------------------------------------------------------ internals: values
    def _log_scalar(self, name: str, value: float, step: int) -> None:
        if not self.log_minibatch and _is_running_metric(name):
            return
        self._last_scalars[name] = (value, step)
        self._metrics.append(Metric(sanitize_key(name), value, int(time.time() * 1000), step))

    def _log_tensor(self, name: str, value: torch.Tensor | np.ndarray, step: int) -> None:
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if _is_accuracy_matrix(name) and array.ndim == 2:
            self._matrices[name] = (array.astype(np.float64), step)
            self._dirty_matrices.add(name)
            return
        base = f"tensors/{slug(name)}/step_{step}"
        if array.ndim <= 2 and array.dtype.kind in "biuf":
            matrix = np.atleast_2d(array.astype(np.float64))
            self._stage(f"{base}.csv", lambda p: np.savetxt(p, matrix, delimiter=",", fmt="%.6g"))
        else:
            self._stage(f"{base}.pt", lambda p: torch.save(torch.as_tensor(array), p))

    def _render_matrices(self) -> None:
        from avalanche_promptmoe.logging.plots import plot_accuracy_matrix

        for name in sorted(self._dirty_matrices):
            matrix, step = self._matrices[name]
            base = f"accuracy_matrix/{slug(name)}"
            self._stage(f"{base}.csv", lambda p, m=matrix: _write_matrix_csv(p, m, "after_task", "task_"))
            what = f"accuracy after experience {matrix.shape[0] - 1}" if matrix.shape[0] else "accuracy"
            head = " · ".join(p for p in (*self._context, what) if p)
            title = f"{head}\nrow t: after training experience t ({name})"
            self._stage(f"{base}.png", lambda p, m=matrix, t=title: plot_accuracy_matrix(m, path=p, title=t))
        self._dirty_matrices.clear()

    def _stage(self, relative: str, write: Callable[[Path], Any]) -> None:
        """Writes an artifact into the staging folder; it is uploaded at the next sync."""
        path = self._staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(path)
        except (OSError, ValueError, TypeError, RuntimeError, AttributeError) as err:  # a bad value or plot
            # must not stop training; anything else (a warning made an error by -W error) propagates
            _log.warning("MLflowLogger could not write artifact %s: %s", relative, err)
            return
        self._artifacts.add(relative)
        self._artifacts_pending.add(relative)

    def _add_params(self, flat: Mapping[str, str]) -> dict[str, str]:
        logged: dict[str, str] = {}
        for raw_key, raw_value in flat.items():
            key, value = sanitize_key(raw_key), str(raw_value)
            if len(value) > MAX_PARAM_VALUE:
                _log.warning("param %s truncated to %d characters", key, MAX_PARAM_VALUE)
                value = value[: MAX_PARAM_VALUE - 3] + "..."
            if key in self._params and self._params[key] != value:
                _log.warning(
                    "param %s was logged as %r; MLflow params are immutable, %r is not logged",
                    key,
                    self._params[key],
                    value,
                )
                continue
            self._params[key] = logged[key] = value
        return logged

    def _log_init_params(self) -> None:
        if not self._init_params_logged:
            self._init_params_logged = True
            self._add_params(self._init_params)

    def _write_final_report(self, status: str) -> None:
        lines = [
            f"# Run report: {self.experiment_name}",
            "",
            f"- run id: `{self.run_id}`; status: {status}; tracking URI: `{self.tracking_uri}`",
            f"- library version {self._tags['library_version']}, git commit `{self._tags['git_commit']}`",
            "",
            "## Task-averaged metrics (last values; DESIGN.md §4)",
            "",
            "| metric | value | % | step |",
            "|---|---|---|---|",
        ]
        summary = {k: v for k, v in self._last_scalars.items() if k.split("/", 1)[0] in _SUMMARY_METRICS}
        stream_acc = {
            k: v for k, v in self._last_scalars.items() if k.startswith("Top1_Acc_Stream/eval_phase")
        }
        lines += [f"| {k} | {v:.4f} | {_percent(v)} | {s} |" for k, (v, s) in sorted(summary.items())]
        if stream_acc:
            lines += ["", "## Stream accuracy (Avalanche, sample-weighted)", "", "| metric | value | step |"]
            lines += [
                "|---|---|---|",
                *(f"| {k} | {v:.4f} | {s} |" for k, (v, s) in sorted(stream_acc.items())),
            ]
        for name, (matrix, step) in sorted(self._matrices.items()):
            lines += ["", f"## {name} (step {step}, %; row t: after training task t)", ""]
            lines += ["| t \\ i | " + " | ".join(str(i) for i in range(matrix.shape[1])) + " |"]
            lines += ["|---" * (matrix.shape[1] + 1) + "|"]
            lines += [
                f"| {t} | " + " | ".join(_percent(v) for v in row) + " |" for t, row in enumerate(matrix)
            ]
        lines += ["", *(markdown for markdown, _ in self._reports.values())]
        payload = {
            "run_id": self.run_id,
            "status": status,
            "summary": {k: {"value": v, "step": s} for k, (v, s) in summary.items()},
            "stream_accuracy": {k: {"value": v, "step": s} for k, (v, s) in stream_acc.items()},
            "accuracy_matrices": {
                k: {"step": s, "matrix": m.tolist()} for k, (m, s) in self._matrices.items()
            },
            "reports": {name: data for name, (_, data) in self._reports.items()},
        }
        self._stage("report.md", lambda p: p.write_text("\n".join(lines) + "\n"))
        self._stage("report.json", lambda p: p.write_text(strict_json(payload)))
