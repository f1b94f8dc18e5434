"""The run's life in the store, for :class:`~.mlflow_logger.MLflowLogger` (a mixin).

What the logger's journal has to become in MLflow, and when: the run opens lazily at the first thing
to send (:meth:`MLflowRunMixin._ensure_started`), :meth:`~MLflowRunMixin._sync` sends what the store
has not received yet, a store error moves the run to the fallback store and replays the journal
there (:meth:`~MLflowRunMixin._fall_back`), :meth:`~MLflowRunMixin.close` ends it FINISHED, FAILED or
KILLED, and ``state_dict()`` / ``load_state_dict()`` carry the resume state (run id, last step,
accumulated wall time) in our strategies' checkpoints. The journal itself (params, tags, metrics,
staged artifacts) is filled by :mod:`.mlflow_api`; every attribute is set in
``MLflowLogger.__init__``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunTag

from avalanche_promptmoe.logging.mlflow_store import STORE_ERRORS, open_run, reopen_run
from avalanche_promptmoe.logging.run_info import sanitize_key

__all__ = ["MLflowFallbackWarning", "MLflowRunMixin"]

# the logger of MLflowLogger's module, so that logging settings made for it cover its mixins too
_log = logging.getLogger("avalanche_promptmoe.logging.mlflow_logger")

_METRICS_PER_BATCH = 500  # MLflow allows 1000 entities and 1 MB per log_batch request
_PARAMS_PER_BATCH = 100  # MLflow's limit for params and for tags
_STATE_VERSION = 1
_STATUSES = ("FINISHED", "FAILED", "KILLED")


class MLflowFallbackWarning(RuntimeWarning):
    """The tracking store failed; the run continues in the local fallback store."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MLflowRunMixin:
    """Run lifecycle, transport and resume state of :class:`~.mlflow_logger.MLflowLogger`."""

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

    # ------------------------------------------------------------------ end of the run
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

