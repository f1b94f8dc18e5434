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

Where the code lives: this module holds the class, its constructor and the Avalanche hooks (what is
read from the strategy); :mod:`.mlflow_run` the run lifecycle, transport, fallback and resume state;
:mod:`.mlflow_api` the journal of logged values and the Python-API ``log_*`` methods.

Run life (see :mod:`.lifecycle`): the run opens lazily, at the first thing to send (or when
``run_id`` is read); it ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM), in the
MLflow status and in ``report.json``. ``state_dict()`` / ``load_state_dict()`` travel in our
strategies' checkpoints, so that ``resume_from`` continues the same run (steps continuing, wall
time accumulated). When no store is writable, everything is dumped to a folder that
``python -m avalanche_promptmoe.logging.replay <folder>`` sends to a store later.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.evaluation.metric_results import AlternativeValues, TensorImage
from avalanche.logging import BaseLogger
from matplotlib.figure import Figure
from mlflow.entities import Metric
from PIL.Image import Image

import avalanche_promptmoe
from avalanche_promptmoe.logging import lifecycle, strategy_info
from avalanche_promptmoe.logging.mlflow_api import MAX_PARAM_VALUE, MLflowApiMixin
from avalanche_promptmoe.logging.mlflow_run import MLflowFallbackWarning, MLflowRunMixin
from avalanche_promptmoe.logging.mlflow_store import Store, resolve_uri, slug
from avalanche_promptmoe.logging.run_info import (
    flatten_config,
    git_commit,
    package_version,
    sanitize_key,
    to_dict,
)

__all__ = ["MLflowFallbackWarning", "MLflowLogger"]

_log = logging.getLogger(__name__)


class MLflowLogger(MLflowRunMixin, MLflowApiMixin, BaseLogger):
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

    # ------------------------------------------------------------------ read from the strategy
    def _log_resume_overrides(self, strategy: Any) -> None:
        overrides = getattr(strategy, "resume_overrides", None)
        if not overrides:
            return
        for key, value in dict(overrides).items():
            self._tags[sanitize_key(f"resume_override.{key}")] = str(value)[:MAX_PARAM_VALUE]
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


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def _to_pil(value: Image | TensorImage) -> Image:
    if isinstance(value, TensorImage):
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(value.image)
    return value
