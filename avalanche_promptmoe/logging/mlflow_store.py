"""Where an MLflow run goes: tracking-URI resolution (local SQLite by default), a bounded
reachability check for tracking servers, opening a run (experiment created or restored) or
reopening an existing one (resume), and the errors that count as "the store failed".

A SQLite store is opened under an exclusive file lock (``<db>.lock`` next to the database), so
that several processes starting at once on a fresh store do not race MLflow's schema migrations
(which otherwise fail with ``duplicate column name``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

DB_NAME = "mlflow.db"
CONNECT_TIMEOUT_S = 2.0
LOCK_TIMEOUT_S = 120.0
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: The UI's shared view "results" (``#/experiments/<id>/runs?viewStateShareKey=results``): the runs
#: table with who ran what (user, source script, commit, dataset) and the results as columns.
RESULTS_VIEW_KEY = "results"
RESULTS_VIEW_TAG = f"mlflow.sharedViewState.{RESULTS_VIEW_KEY}"
RESULTS_VIEW = {
    "selectedColumns": [
        "attributes.`User`", "attributes.`Source`", "attributes.`Version`", "attributes.`Dataset`",
        *(f"metrics.`final/{m}`" for m in ("faa", "caa", "ffm", "ffm_hide", "trainable_params", "wall_time_s")),
    ],
}


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [MlflowException, OSError, sqlite3.Error]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        errors.append(SQLAlchemyError)
    except ImportError:  # pragma: no cover - MLflow's SQL stores need SQLAlchemy
        pass
    return tuple(errors)


#: What a failing tracking store raises: MLflow's own errors, I/O and network errors (``requests``'
#: errors are ``OSError``), SQLite and SQLAlchemy errors. Anything else (a bug, a warning turned
#: into an error by ``-W error``) propagates instead of moving the run to the fallback store.
STORE_ERRORS: tuple[type[BaseException], ...] = _store_errors()


def slug(name: str) -> str:
    """A file-name-safe form of a metric name: ``EvalStream/Acc_Matrix`` → ``EvalStream_Acc_Matrix``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.") or "value"


def sqlite_uri(directory: str | Path, db_name: str = DB_NAME) -> str:
    """``sqlite:///<absolute directory>/<db_name>``."""
    return f"sqlite:///{(Path(directory).expanduser() / db_name).resolve()}"


def resolve_uri(tracking_uri: str | Path | None) -> str:
    """``None`` → ``<cwd>/mlruns``; a plain path → SQLite there (a ``*.db`` file or a directory)."""
    if tracking_uri is None:
        return sqlite_uri(Path.cwd() / "mlruns")
    uri = str(tracking_uri)
    if urlsplit(uri).scheme or uri.startswith("databricks"):
        return uri
    path = Path(uri)
    return sqlite_uri(path.parent, path.name) if path.suffix == ".db" else sqlite_uri(path)


def store_root(uri: str) -> Path | None:
    """Directory of a SQLite database file (artifacts go to ``<root>/artifacts``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if db in ("", ":memory:") else Path(db).resolve().parent


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if db in ("", ":memory:") else Path(db).resolve()


@contextlib.contextmanager
def store_lock(uri: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive inter-process lock on a SQLite store (``<db>.lock``); a no-op for other stores.

    Raises:
        TimeoutError: the lock was not acquired within ``timeout_s`` (the file is named).
    """
    db = sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no inter-process lock (start runs one at a time)
        fcntl = None  # type: ignore[assignment]
    if db is None or fcntl is None:
        yield
        return
    lock = db.with_name(db.name + ".lock")
    with open(lock, "a") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"MLflow store lock {lock} held for more than {timeout_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_reachable(uri: str) -> None:
    """A 2 s TCP connect to an http(s) tracking server. Raises OSError when it cannot connect."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S):
        pass


@contextlib.contextmanager
def bounded_http_requests() -> Iterator[None]:
    """No retries and a 10 s timeout for MLflow's REST calls (unless the user set them)."""
    overrides = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [k for k in overrides if k not in os.environ]
    os.environ.update({k: overrides[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@dataclass
class Store:
    """One tracking store and the run opened in it; the client is rebuilt after unpickling."""

    uri: str
    experiment_id: str = ""
    run_id: str = ""
    artifact_uri: str = ""

    @cached_property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "client"}


def open_run(uri: str, experiment_name: str, run_name: str | None) -> Store:
    """Creates (or reuses) the experiment and starts a run. Raises whatever the store raises."""
    root = store_root(uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    http = urlsplit(uri).scheme in ("http", "https")
    with bounded_http_requests() if http else contextlib.nullcontext(), store_lock(uri):
        store = Store(uri)
        client = store.client
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            location = None if root is None else str(root / "artifacts" / slug(experiment_name))
            try:
                store.experiment_id = client.create_experiment(experiment_name, artifact_location=location)
            except MlflowException:  # created concurrently by another logger
                experiment = client.get_experiment_by_name(experiment_name)
                if experiment is None:
                    raise
        if experiment is not None:
            store.experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
        if experiment is None or EXPERIMENT_KIND_TAG not in experiment.tags:
            # MLflow ≥ 3 opens an experiment without this tag on its GenAI "Overview" of traces;
            # ours are model-training runs (the UI's runs table, with their metrics)
            client.set_experiment_tag(store.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
        if experiment is None or RESULTS_VIEW_TAG not in experiment.tags:
            # a saved view of the runs table with the results as columns: ?viewStateShareKey=results
            client.set_experiment_tag(store.experiment_id, RESULTS_VIEW_TAG, json.dumps(RESULTS_VIEW))
        run = client.create_run(store.experiment_id, run_name=run_name)
    store.run_id, store.artifact_uri = run.info.run_id, run.info.artifact_uri
    return store


def reopen_run(uri: str, run_id: str) -> tuple[Store, dict[str, str]]:
    """Reopens an existing run (status back to RUNNING) to continue it; returns the store and the
    params the run already has. Raises whatever the store raises (``MlflowException`` when the run
    does not exist), and ``MlflowException`` when the run was deleted."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise MlflowException(f"no MLflow store at {uri}; cannot continue run {run_id}")
    check_reachable(uri)
    http = urlsplit(uri).scheme in ("http", "https")
    with bounded_http_requests() if http else contextlib.nullcontext(), store_lock(uri):
        store = Store(uri)
        run = store.client.get_run(run_id)
        if run.info.lifecycle_stage == "deleted":
            raise MlflowException(f"run {run_id} in {uri} was deleted; cannot continue it")
        store.client.update_run(run_id, status="RUNNING")
    store.experiment_id, store.run_id, store.artifact_uri = run.info.experiment_id, run_id, run.info.artifact_uri
    return store, dict(run.data.params)
