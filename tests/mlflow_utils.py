"""One migrated MLflow SQLite template per test session: copying it saves MLflow's 2-5 s of schema
migrations per store."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

_TEMPLATE: Path | None = None


def fresh_store(directory: Path) -> str:
    """A migrated, empty SQLite store in ``directory``; returns its ``sqlite:///`` URI."""
    global _TEMPLATE
    if _TEMPLATE is None:
        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="mlflow_template_")) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        _TEMPLATE = path
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE, directory / "mlflow.db")
    return f"sqlite:///{directory}/mlflow.db"
