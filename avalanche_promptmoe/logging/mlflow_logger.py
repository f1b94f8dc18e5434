"""An Avalanche ``BaseLogger`` that records a continual-learning run in MLflow 3 (ECOSYSTEM.md §A6).

Store layout. A SQLite tracking URI ``sqlite:///<dir>/mlflow.db`` keeps its artifacts next to the
database::

    <dir>/mlflow.db                                           runs, params, tags, metrics
    <dir>/artifacts/<experiment>/<run_id>/artifacts/...       files of each run

The default store is ``<cwd>/mlruns`` (``sqlite:///<cwd>/mlruns/mlflow.db``); browse it with
``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` from the same directory.

Artifacts of a run: ``config.json`` (:meth:`MLflowLogger.log_config`), ``accuracy_matrix/<name>.csv``
and ``.png`` (the latest accuracy matrix of each name, overwritten at every evaluation),
``expert_usage/<name>.csv|.png``, ``tensors|figures|images/<name>/step_<x>.*`` for other
non-scalar values, ``text/<name>.txt`` for strings, ``report.md`` and ``report.json`` at close.
"""

from __future__ import annotations

import atexit
import csv
import json
import logging
import shutil
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.evaluation.metric_results import AlternativeValues, TensorImage
from avalanche.logging import BaseLogger
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from PIL.Image import Image

import avalanche_promptmoe
from avalanche_promptmoe.logging.mlflow_store import Store, open_run, resolve_uri, slug
from avalanche_promptmoe.logging.run_info import (
    flatten_config,
    git_commit,
    package_version,
    sanitize_key,
    to_dict,
)

__all__ = ["MLflowFallbackWarning", "MLflowLogger"]

_log = logging.getLogger(__name__)

_METRICS_PER_BATCH = 500  # MLflow allows 1000 entities and 1 MB per log_batch request
_PARAMS_PER_BATCH = 100  # MLflow's limit for params and for tags
_MAX_PARAM_VALUE = 6000
_SUMMARY_METRICS = ("FAA", "CAA", "FFM", "FFM_HiDe")


class MLflowFallbackWarning(RuntimeWarning):
    """The tracking store failed; the run continues in the local fallback store."""


# ---------------------------------------------------------------------------------- helpers
def _is_running_metric(name: str) -> bool:
    """Minibatch (``*_MB``) and epoch-running (``*Running*``) metrics, skipped by default."""
    head = name.split("/", 1)[0]
    return head.endswith("_MB") or "Running" in head


def _is_accuracy_matrix(name: str) -> bool:
    return "Acc_Matrix" in name or name.startswith("TaskAccMatrix")


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def _close_at_exit(ref: weakref.ref[MLflowLogger]) -> None:
    logger = ref()
    if logger is not None and not logger.closed:
        _log.warning("MLflowLogger.close() was not called; closing run %s at exit", logger.run_id)
        logger.close()


# ---------------------------------------------------------------------------------- logger
class MLflowLogger(BaseLogger):
    """Avalanche logger that writes params, per-experience metrics and artifacts to MLflow.

    Works in any strategy's ``EvaluationPlugin`` (Avalanche's ``Naive`` included). Scalars are
    buffered and sent with ``MlflowClient.log_batch`` at ``after_training_exp``, ``after_training``,
    ``after_eval`` and :meth:`close`, with ``step = x_plot`` (Avalanche's
    ``clock.train_iterations``). Tensors, figures and images become artifacts, never metrics;
    accuracy matrices (``*Acc_Matrix*``, ``TaskAccMatrix*``) are written as CSV + heatmap PNG,
    overwritten with the latest one. Only a ``MlflowClient`` bound to the URI is used, so
    ``mlflow.set_tracking_uri`` and other loggers in the process are untouched.

    Failure handling: an http(s) server that does not accept a TCP connection within 2 s, or any
    store error while opening the run, gives one :class:`MLflowFallbackWarning` and the run goes to
    the local fallback store. A later failing call does the same: a new run is opened in the
    fallback store and everything logged so far (params, tags, metrics, artifacts) is replayed
    into it, so the fallback run is complete. (Later REST calls use MLflow's own retry settings,
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT``.) If the fallback fails
    too, everything is kept on disk and the folder is named in an error log.

    Args:
        experiment_name: MLflow experiment, created if missing.
        tracking_uri: ``None`` → ``sqlite:///<cwd>/mlruns/mlflow.db`` (artifacts in
            ``<cwd>/mlruns/artifacts``; open with ``mlflow ui --backend-store-uri
            sqlite:///mlruns/mlflow.db``). A plain path means SQLite in that directory (or that
            ``.db`` file). Any other URI (``sqlite:///...``, ``http://host:5000``) is used as is;
            ``file:`` stores raise in MLflow 3 unless ``MLFLOW_ALLOW_FILE_STORE=true``.
        run_name: MLflow run name (MLflow picks one if None).
        params: extra params, flattened like :meth:`log_config`, logged once at ``before_training``.
        tags: extra run tags.
        log_minibatch: also log minibatch (``*_MB``) and epoch-running (``*Running*``) metrics.
        fallback_dir: directory of the fallback SQLite store; default ``<cwd>/mlruns``.

    Raises:
        RuntimeError: constructed on a non-main distributed rank (``BaseLogger``).
    """

    def __init__(
        self,
        experiment_name: str = "avalanche_promptmoe",
        tracking_uri: str | Path | None = None,
        run_name: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        log_minibatch: bool = False,
        fallback_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.experiment_name = experiment_name
        self.log_minibatch = log_minibatch
        self._run_name = run_name
        self._primary_uri = resolve_uri(tracking_uri)
        self._fallback_uri = resolve_uri(Path(fallback_dir) if fallback_dir is not None else None)
        self._init_params = flatten_config(to_dict(params)) if params else {}
        self._init_params_logged = False
        self._closed = False
        self._fell_back = False
        # Journal of everything logged, so that a fallback run can be complete.
        self._staging = Path(tempfile.mkdtemp(prefix="avalanche_promptmoe_mlflow_"))
        self._tags: dict[str, str] = {
            "library_version": avalanche_promptmoe.__version__,
            "git_commit": git_commit(),
            "mlflow.source.git.commit": "",
            "torch_version": torch.__version__,
            "timm_version": package_version("timm"),
            "avalanche_version": package_version("avalanche-lib"),
            "mlflow_version": package_version("mlflow"),
        }
        self._tags["mlflow.source.git.commit"] = self._tags["git_commit"]
        self._tags.update({sanitize_key(k): str(v) for k, v in (tags or {}).items()})
        self._params: dict[str, str] = {
            "library_version": self._tags["library_version"],
            "git_commit": self._tags["git_commit"],
        }
        self._metrics: list[Metric] = []
        self._files: list[tuple[Path, str | None]] = []  # (local path, artifact dir) by the user
        self._artifacts: set[str] = set()  # staged files, relative to self._staging
        # What the current store has received.
        self._tags_sent: dict[str, str] = {}
        self._params_sent: set[str] = set()
        self._metrics_sent = 0
        self._files_sent = 0
        self._artifacts_pending: set[str] = set()
        # Latest values for the report.
        self._last_scalars: dict[str, tuple[float, int]] = {}
        self._matrices: dict[str, tuple[np.ndarray, int]] = {}
        self._dirty_matrices: set[str] = set()
        self._reports: dict[str, tuple[str, Any]] = {}

        self._store: Store | None = None
        try:
            self._store = open_run(self._primary_uri, experiment_name, run_name)
        except Exception as err:  # any store error: fall back, keep going
            self._fall_back(err, "opening the run")
        else:
            self._sync()
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ identity
    @property
    def run_id(self) -> str | None:
        """Id of the run in the store in use (the fallback's after a fallback)."""
        return None if self._store is None else self._store.run_id

    @property
    def experiment_id(self) -> str | None:
        return None if self._store is None else self._store.experiment_id

    @property
    def tracking_uri(self) -> str:
        """URI of the store in use: the requested one, or the fallback's after a fallback."""
        return self._store.uri if self._store is not None else self._fallback_uri

    @property
    def artifact_uri(self) -> str | None:
        return None if self._store is None else self._store.artifact_uri

    @property
    def fell_back(self) -> bool:
        """True once the run has moved to the fallback store."""
        return self._fell_back

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"MLflowLogger(experiment={self.experiment_name!r}, uri={self.tracking_uri!r}, run={self.run_id!r})"

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        self.close(failed=exc_type is not None)

    # ------------------------------------------------------------------ Avalanche interface
    def log_single_metric(self, name: str, value: Any, x_plot: int | None) -> None:
        """Buffers a scalar as a metric, or stages a non-scalar value as an artifact."""
        if self._closed:
            _log.debug("MLflowLogger is closed; dropping %s", name)
            return
        if isinstance(value, AlternativeValues):
            value = value.best_supported_value(Figure, Image, TensorImage, torch.Tensor, float, int, str)
        step = 0 if x_plot is None else int(x_plot)
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (bool, int, float, np.number, np.bool_)):
            self._log_scalar(name, float(value), step)
        elif isinstance(value, (torch.Tensor, np.ndarray)):
            self._log_tensor(name, value, step)
        elif isinstance(value, Figure):
            self._stage(f"figures/{slug(name)}/step_{step}.png", lambda p: value.savefig(p, format="png"))
        elif isinstance(value, (Image, TensorImage)):
            self._stage(
                f"images/{slug(name)}/step_{step}.png", lambda p: _to_pil(value).save(p, format="PNG")
            )
        elif isinstance(value, str):
            self._stage(f"text/{slug(name)}.txt", lambda p: _append(p, f"{step}\t{value}\n"))
        elif value is not None:
            _log.debug("MLflowLogger: no handler for %s of type %s", name, type(value).__name__)

    def before_training(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        """Logs the constructor's ``params`` (once) and the strategy's class and device as tags."""
        self._log_init_params()
        self._tags.setdefault("strategy", type(strategy).__name__)
        self._tags.setdefault("device", str(getattr(strategy, "device", "unknown")))
        self._sync()

    def after_training_exp(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        self.flush()

    def after_training(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        self.flush()

    def after_eval(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        self.flush()

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
        self, counts: Any, name: str = "expert_usage", *, layers: Sequence[int | str] | None = None
    ) -> None:
        """Logs expert selection counts as a heatmap PNG and a CSV (layers × experts).

        Args:
            counts: ``(layers, heads, experts)`` (summed over heads) or ``(layers, experts)``.
            name: artifact base name under ``expert_usage/``.
            layers: row labels (prompted block indices); default ``0 .. layers-1``.

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
        self._stage(f"{base}.png", lambda p: plot_expert_usage(raw, layers=layers, path=p, title=name))
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
        self._stage(f"{slug(name)}.json", lambda p: p.write_text(json.dumps(payload, indent=2, default=str)))
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

    def close(self, failed: bool = False) -> None:
        """Flushes, writes ``report.md``/``report.json`` and ends the run (FINISHED or FAILED).

        Idempotent: later calls do nothing.
        """
        if self._closed:
            return
        self._log_init_params()
        self._render_matrices()
        self._write_final_report(status="FAILED" if failed else "FINISHED")
        self._sync()
        for _ in range(2):  # a failing primary hands over to the fallback, which ends its own run
            store = self._store
            if store is None or self._guard(
                "ending the run",
                store.client.set_terminated,
                store.run_id,
                "FAILED" if failed else "FINISHED",
            ):
                break
        self._closed = True
        if self._store is None:
            self._dump_journal()
        else:
            shutil.rmtree(self._staging, ignore_errors=True)

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
            title = f"{name}\nstep {step}; row t: after training task t"
            self._stage(f"{base}.png", lambda p, m=matrix, t=title: plot_accuracy_matrix(m, path=p, title=t))
        self._dirty_matrices.clear()

    def _stage(self, relative: str, write: Callable[[Path], Any]) -> None:
        """Writes an artifact into the staging folder; it is uploaded at the next sync."""
        path = self._staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(path)
        except Exception as err:  # a bad value or plot must not stop training
            _log.warning("MLflowLogger could not write artifact %s: %s", relative, err)
            return
        self._artifacts.add(relative)
        self._artifacts_pending.add(relative)

    def _add_params(self, flat: Mapping[str, str]) -> dict[str, str]:
        logged: dict[str, str] = {}
        for raw_key, raw_value in flat.items():
            key, value = sanitize_key(raw_key), str(raw_value)
            if len(value) > _MAX_PARAM_VALUE:
                _log.warning("param %s truncated to %d characters", key, _MAX_PARAM_VALUE)
                value = value[: _MAX_PARAM_VALUE - 3] + "..."
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
        self._stage("report.json", lambda p: p.write_text(json.dumps(payload, indent=2, default=str)))

    # ------------------------------------------------------------------ internals: transport
    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Calls ``fn``; on any error switches to the fallback store and returns False."""
        try:
            fn(*args, **kwargs)
        except Exception as err:
            self._fall_back(err, what)
            return False
        return True

    def _sync(self) -> bool:
        """Sends to the current store everything it has not received yet."""
        store = self._store
        if store is None:
            return False
        client, run_id = store.client, store.run_id
        tags = [RunTag(k, v) for k, v in self._tags.items() if self._tags_sent.get(k) != v]
        for chunk in _chunks(tags, _PARAMS_PER_BATCH):
            if not self._guard("logging tags", client.log_batch, run_id, tags=chunk, synchronous=True):
                return False
            self._tags_sent.update({t.key: t.value for t in chunk})
        params = [Param(k, v) for k, v in self._params.items() if k not in self._params_sent]
        for chunk in _chunks(params, _PARAMS_PER_BATCH):
            if not self._guard("logging params", client.log_batch, run_id, params=chunk, synchronous=True):
                return False
            self._params_sent.update(p.key for p in chunk)
        while self._metrics_sent < len(self._metrics):
            chunk = self._metrics[self._metrics_sent : self._metrics_sent + _METRICS_PER_BATCH]
            if not self._guard("logging metrics", client.log_batch, run_id, metrics=chunk, synchronous=True):
                return False
            self._metrics_sent += len(chunk)
        for relative in sorted(self._artifacts_pending):
            parent = str(Path(relative).parent.as_posix())
            local = str(self._staging / relative)
            if not self._guard(
                "logging artifacts", client.log_artifact, run_id, local, None if parent == "." else parent
            ):
                return False
            self._artifacts_pending.discard(relative)
        while self._files_sent < len(self._files):
            local, artifact_path = self._files[self._files_sent]
            upload = client.log_artifacts if local.is_dir() else client.log_artifact
            if not self._guard("logging artifacts", upload, run_id, str(local), artifact_path):
                return False
            self._files_sent += 1
        return True

    def _fall_back(self, err: Exception, what: str) -> None:
        """Moves the run to the fallback store and replays the journal there (once)."""
        failed = self._store
        self._store = None
        failed_uri = self._primary_uri if failed is None else failed.uri
        if self._fell_back or failed_uri == self._fallback_uri:
            _log.error(
                "MLflow fallback store %s failed while %s (%s: %s); nothing more is sent, all values "
                "are kept in %s",
                self._fallback_uri,
                what,
                type(err).__name__,
                err,
                self._staging,
            )
            return
        self._fell_back = True
        warnings.warn(
            f"MLflow tracking store {self._primary_uri!r} failed while {what} ({type(err).__name__}: "
            f"{err}); this run is logged to the local store {self._fallback_uri!r} instead, with "
            f"everything logged so far. Open it with: mlflow ui --backend-store-uri {self._fallback_uri}",
            MLflowFallbackWarning,
            stacklevel=3,
        )
        self._tags["fallback_from"] = self._primary_uri
        if failed is not None:
            self._tags["fallback_from_run_id"] = failed.run_id
        self._tags_sent, self._params_sent, self._metrics_sent, self._files_sent = {}, set(), 0, 0
        self._artifacts_pending = set(self._artifacts)
        try:
            self._store = open_run(self._fallback_uri, self.experiment_name, self._run_name)
        except Exception as err2:
            self._fall_back(err2, "opening the fallback run")
            return
        self._sync()

    def _dump_journal(self) -> None:
        """Last resort when no store works: writes metrics, params and tags next to the artifacts."""
        rows = [
            {"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp} for m in self._metrics
        ]
        (self._staging / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (self._staging / "params.json").write_text(json.dumps(self._params, indent=2))
        (self._staging / "tags.json").write_text(json.dumps(self._tags, indent=2))
        _log.error("no MLflow store accepted this run; its values are in %s", self._staging)


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def _to_pil(value: Image | TensorImage) -> Image:
    if isinstance(value, TensorImage):
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(value.image)
    return value
