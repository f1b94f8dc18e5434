"""Where an MLflow run goes: tracking-URI resolution (local SQLite by default), a bounded
reachability check for tracking servers, and opening a run (experiment created or restored)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
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
    with bounded_http_requests() if http else contextlib.nullcontext():
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
        run = client.create_run(store.experiment_id, run_name=run_name)
    store.run_id, store.artifact_uri = run.info.run_id, run.info.artifact_uri
    return store
