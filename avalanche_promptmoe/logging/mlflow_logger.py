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

Run life (see :mod:`.lifecycle`): the run opens lazily, at the first thing to send (or when
``run_id`` is read); it ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM), in the
MLflow status and in ``report.json``. ``state_dict()`` / ``load_state_dict()`` travel in our
strategies' checkpoints, so that ``resume_from`` continues the same run (steps continuing, wall
time accumulated). When no store is writable, everything is dumped to a folder that
``python -m avalanche_promptmoe.logging.replay <folder>`` sends to a store later.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
import warnings
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
from avalanche_promptmoe.logging import lifecycle, strategy_info
from avalanche_promptmoe.logging.mlflow_store import (
    STORE_ERRORS,
    Store,
    open_run,
    reopen_run,
    resolve_uri,
    slug,
)
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
_STATE_VERSION = 1
_STATUSES = ("FINISHED", "FAILED", "KILLED")


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

    Attached to one of our strategies it logs by itself (Python API and scripts alike): at
    ``before_training`` the resolved settings (``method.*`` with every config field, ``strategy.*``,
    ``backbone.*``; see :func:`~.strategy_info.describe_strategy`) and the benchmark's ``protocol``
    (``protocol.*`` params and ``protocol.json``, from ``benchmark=`` or the stream's benchmark);
    after each training experience the expert-usage heatmap (``strategy.expert_usage()``:
    ``expert_usage/expert_usage_exp<k>.png|csv`` and the latest as ``expert_usage/expert_usage``);
    after each evaluation that completes the accuracy matrix, ``final/<faa|caa|ffm|...>``,
    ``final/trainable_params``, ``final/sample_weighted_stream_acc`` and ``final/wall_time_s``
    (step = tasks trained; the last value is the run's result). With Avalanche's own strategies it
    logs what they expose (class, batch sizes, epochs, optimizer and lr, plugins).

    Failure handling: an http(s) server that does not accept a TCP connection within 2 s, or a
    store error (:data:`~.mlflow_store.STORE_ERRORS`; other exceptions propagate) while opening the
    run, gives one :class:`MLflowFallbackWarning` and the run goes to
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
        benchmark: the benchmark, for its ``protocol`` record (optional: also found through the
            experience's stream when the stream knows its benchmark).

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
        benchmark: Any = None,
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

        # Run life: lazy start, resume of a checkpointed run, step offset, accumulated wall time.
        self._store: Store | None = None
        self._started = False
        self._resume: dict[str, Any] | None = None  # state to continue, until the run opens
        self._remote_params: dict[str, str] = {}  # params the continued run already had
        self._pending_step: int | None = None  # saved step, turned into an offset at the next hook
        self._step_offset = 0
        self._max_step = 0
        self._wall_saved = 0.0
        self._wall_t0 = time.perf_counter()
        self._status: str | None = None
        # What was read from the strategy.
        self._benchmark = benchmark
        self._strategy_logged = False
        self._protocol_logged = False
        self._context = ("", "")  # (method, benchmark) for figure titles
        lifecycle.register(self)

    # ------------------------------------------------------------------ identity
    @property
    def run_id(self) -> str | None:
        """Id of the run in the store in use (the fallback's after a fallback); opens the run."""
        self._ensure_started()
        return None if self._store is None else self._store.run_id

    @property
    def experiment_id(self) -> str | None:
        self._ensure_started()
        return None if self._store is None else self._store.experiment_id

    @property
    def tracking_uri(self) -> str:
        """URI of the store in use: the requested one, or the fallback's after a fallback."""
        self._ensure_started()
        return self._store.uri if self._store is not None else self._fallback_uri

    @property
    def artifact_uri(self) -> str | None:
        self._ensure_started()
        return None if self._store is None else self._store.artifact_uri

    @property
    def wall_time_s(self) -> float:
        """Seconds since the logger was made, plus those of the runs it continues (resume)."""
        return self._wall_saved + time.perf_counter() - self._wall_t0

    @property
    def status(self) -> str | None:
        """FINISHED / FAILED / KILLED once closed, else None."""
        return self._status

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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self.close(status=lifecycle.status_of(exc))

    # ------------------------------------------------------------------ Avalanche interface
    def log_single_metric(self, name: str, value: Any, x_plot: int | None) -> None:
        """Buffers a scalar as a metric, or stages a non-scalar value as an artifact."""
        if self._closed:
            _log.debug("MLflowLogger is closed; dropping %s", name)
            return
        if isinstance(value, AlternativeValues):
            value = value.best_supported_value(Figure, Image, TensorImage, torch.Tensor, float, int, str)
        step = (0 if x_plot is None else int(x_plot)) + self._step_offset
        self._max_step = max(self._max_step, step)
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
        """Logs the constructor's ``params`` (once), the strategy's resolved settings (once), the
        settings changed on resume (``strategy.resume_overrides``) and class/device/method tags."""
        self._settle_step_offset(strategy)
        self._log_init_params()
        self._tags.setdefault("strategy", type(strategy).__name__)
        self._tags.setdefault("device", str(getattr(strategy, "device", "unknown")))
        self._tags.setdefault("method", strategy_info.method_label(strategy))
        if not self._strategy_logged:
            self._strategy_logged = True
            self._add_params(flatten_config(strategy_info.describe_strategy(strategy)))
        self._log_resume_overrides(strategy)
        self._log_protocol(strategy)
        self._context = (strategy_info.method_label(strategy), self._benchmark_name(strategy))
        self._sync()

    def before_training_exp(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        if not self._protocol_logged and self._log_protocol(strategy):
            self._sync()

    def before_eval(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        self._settle_step_offset(strategy)

    def after_training_exp(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        counts = strategy_info.expert_usage(strategy)
        if counts is not None:
            exp = getattr(getattr(strategy, "experience", None), "current_experience", None)
            if not isinstance(exp, int):
                exp = int(getattr(getattr(strategy, "clock", None), "train_exp_counter", 0))
            label = self._title(strategy, f"expert usage after experience {exp}")
            self.log_expert_usage(counts, f"expert_usage_exp{exp}", title=label)
            self.log_expert_usage(counts, "expert_usage", title=label)
        self.flush()

    def after_training(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        self.flush()

    def after_eval(self, strategy: Any, metric_values: Any = None, **kwargs: Any) -> None:
        found = strategy_info.final_metrics(strategy)
        if found is not None:
            values, tasks = found
            values["wall_time_s"] = self.wall_time_s
            for key, value in values.items():
                self._log_scalar(f"final/{key}", value, tasks)
        self._context = (strategy_info.method_label(strategy), self._benchmark_name(strategy))
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

    def close(self, failed: bool = False, *, status: str | None = None) -> None:
        """Flushes, writes ``report.md``/``report.json`` and ends the run.

        Args:
            failed: shorthand for ``status="FAILED"``.
            status: ``"FINISHED"`` (default), ``"FAILED"`` or ``"KILLED"``; the same word goes to
                MLflow and to ``report.json``.

        Idempotent: later calls do nothing.

        Raises:
            ValueError: an unknown ``status``.
        """
        if self._closed:
            return
        status = status or ("FAILED" if failed else "FINISHED")
        if status not in _STATUSES:
            raise ValueError(f"status: expected one of {_STATUSES}, got {status!r}")
        self._status = status
        self._log_init_params()
        self._render_matrices()
        self._write_final_report(status=status)
        self._sync()
        for _ in range(2):  # a failing primary hands over to the fallback, which ends its own run
            store = self._store
            if store is None or self._guard("ending the run", store.client.set_terminated, store.run_id, status):
                break
        self._closed = True
        if self._store is None:
            self._dump_journal()
        else:
            shutil.rmtree(self._staging, ignore_errors=True)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Where the run is and how far it got (sent to the store first): tracking URI, run id,
        last metric step, accumulated wall time, latest scalars. Our strategies' checkpoints
        include it, so that ``resume_from`` continues this run."""
        self.flush()
        return {
            "version": _STATE_VERSION,
            "tracking_uri": None if self._store is None else self._store.uri,
            "run_id": None if self._store is None else self._store.run_id,
            "experiment_name": self.experiment_name,
            "step": int(self._max_step),
            "wall_time_s": float(self.wall_time_s),
            "last_scalars": {k: [float(v), int(s)] for k, (v, s) in self._last_scalars.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continues the run of ``state`` (from :meth:`state_dict`): the same MLflow run (status back
        to RUNNING), metric steps continuing after its last one, wall time added up.

        If this logger already opened a run of its own, that run is deleted (it holds only what
        this logger logged, which is sent again to the continued run). If the saved run cannot be
        reopened (another store, deleted), a new run is opened with a ``resumed_from_run_id`` tag.
        """
        if self._closed:
            raise RuntimeError("MLflowLogger.load_state_dict: the logger is closed")
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(f"MLflowLogger state version {version!r} is not supported (expected {_STATE_VERSION})")
        self._wall_saved = float(state["wall_time_s"])
        self._wall_t0 = time.perf_counter()
        self._pending_step = int(state["step"])
        for key, (value, step) in dict(state.get("last_scalars", {})).items():
            self._last_scalars.setdefault(key, (float(value), int(step)))
        if not state.get("run_id"):
            return
        current = self._store
        if current is not None and current.run_id == state["run_id"]:
            return  # the same run, e.g. resume_from within one process
        if current is not None:  # a run of our own was opened already: replace it by the saved one
            try:
                current.client.delete_run(current.run_id)
            except STORE_ERRORS as err:
                _log.warning("could not delete the superseded MLflow run %s: %s", current.run_id, err)
            self._store = None
            self._tags_sent, self._params_sent, self._metrics_sent, self._files_sent = {}, set(), 0, 0
            self._artifacts_pending = set(self._artifacts)
        self._started = False
        self._resume = dict(state)
        self._sync()

    def _settle_step_offset(self, strategy: Any) -> None:
        """After a resume, offsets Avalanche's restarted step counter so that steps continue."""
        if self._pending_step is None:
            return
        clock = int(getattr(getattr(strategy, "clock", None), "train_iterations", 0) or 0)
        self._step_offset = max(0, self._pending_step - clock)
        self._max_step = max(self._max_step, self._pending_step)
        self._pending_step = None

    def _log_resume_overrides(self, strategy: Any) -> None:
        overrides = getattr(strategy, "resume_overrides", None)
        if not overrides:
            return
        for key, value in dict(overrides).items():
            self._tags[sanitize_key(f"resume_override.{key}")] = str(value)[:_MAX_PARAM_VALUE]
        self._add_params(flatten_config({"resume_override": {str(k): v for k, v in dict(overrides).items()}}))

    def _log_protocol(self, strategy: Any) -> bool:
        if self._protocol_logged:
            return False
        protocol = strategy_info.benchmark_protocol(strategy, self._benchmark)
        if protocol is None:
            return False
        self._protocol_logged = True
        scalars = {
            k: v
            for k, v in protocol.items()
            if isinstance(v, (str, int, float, bool)) and len(str(v)) <= 250 and "transform" not in k
        }
        self._add_params(flatten_config({"protocol": scalars}))
        if "benchmark" in protocol:
            self._tags.setdefault("benchmark", str(protocol["benchmark"]))
        text = json.dumps(protocol, indent=2, default=str)
        self._stage("protocol.json", lambda p: p.write_text(text))
        return True

    def _benchmark_name(self, strategy: Any) -> str:
        protocol = strategy_info.benchmark_protocol(strategy, self._benchmark) or {}
        return str(protocol.get("benchmark") or self._tags.get("benchmark", ""))

    def _title(self, strategy: Any, what: str) -> str:
        parts = [strategy_info.method_label(strategy), self._benchmark_name(strategy), what]
        return " · ".join(p for p in parts if p)

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
        """Calls ``fn``; on a store error switches to the fallback store and returns False."""
        try:
            fn(*args, **kwargs)
        except STORE_ERRORS as err:
            self._fall_back(err, what)
            return False
        return True

    def _sync(self) -> bool:
        """Sends to the current store everything it has not received yet."""
        self._ensure_started()
        store = self._store
        if store is None:
            return False
        client, run_id = store.client, store.run_id
        self._settle_remote_params()
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

    def _ensure_started(self) -> None:
        """Opens the run (or reopens the one to continue) at the first need: lazy, so that a logger
        made and then given a checkpoint's state never leaves an empty run behind."""
        if self._started or self._closed:
            return
        self._started = True
        resume, self._resume = self._resume, None
        if resume is not None:
            uri = resume.get("tracking_uri")
            if uri in (self._primary_uri, self._fallback_uri):
                try:
                    self._store, self._remote_params = reopen_run(uri, resume["run_id"])
                    self._fell_back = self._fell_back or uri != self._primary_uri
                    self._tags["resumed"] = "true"
                    return
                except STORE_ERRORS as err:
                    reason = f"{type(err).__name__}: {err}"
            else:
                reason = f"it is in another store ({uri})"
            _log.warning("MLflow run %s cannot be continued (%s); a new run is opened", resume["run_id"], reason)
            self._tags["resumed_from_run_id"] = str(resume["run_id"])
        try:
            self._store = open_run(self._primary_uri, self.experiment_name, self._run_name)
        except STORE_ERRORS as err:
            self._fall_back(err, "opening the run")

    def _settle_remote_params(self) -> None:
        """A continued run keeps its params (MLflow params are immutable): equal ones count as sent,
        changed ones are logged as ``resume_override.<key>`` tags instead (a warning names them)."""
        for key, value in self._params.items():
            if key in self._params_sent or key not in self._remote_params:
                continue
            self._params_sent.add(key)
            if self._remote_params[key] != value:
                _log.warning(
                    "param %s of the continued run is %r; the resumed run uses %r (tag resume_override.%s)",
                    key, self._remote_params[key], value, key,
                )
                self._tags[sanitize_key(f"resume_override.{key}")] = value

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
        self._remote_params = {}
        try:
            self._store = open_run(self._fallback_uri, self.experiment_name, self._run_name)
        except STORE_ERRORS as err2:
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
        run = {"experiment_name": self.experiment_name, "run_name": self._run_name, "status": self._status}
        (self._staging / "run.json").write_text(json.dumps(run, indent=2))
        _log.error(
            "no MLflow store accepted this run; its values are in %s — send them to a store later with: "
            "python -m avalanche_promptmoe.logging.replay %s --tracking-uri <uri>",
            self._staging,
            self._staging,
        )


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def _to_pil(value: Image | TensorImage) -> Image:
    if isinstance(value, TensorImage):
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(value.image)
    return value
