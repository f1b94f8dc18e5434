"""What MLflow's UI shows about a run, in MLflow's own conventions (issue #21 item 7).

* :func:`source_tags` — ``mlflow.source.name`` (the script), ``mlflow.source.type``,
  ``mlflow.source.git.commit`` and ``mlflow.user``: the UI's "Source", "User" and commit columns.
* :func:`benchmark_dataset` — the benchmark as an MLflow dataset (name, digest, source, profile):
  the run's "Datasets" column and the dataset panel, logged with ``MlflowClient.log_inputs``.
* :func:`start_system_metrics` — MLflow's system-metrics monitor (``system/*`` CPU, memory and, on
  CUDA with ``nvidia-ml-py``, GPU utilisation and memory) for a run opened through a client.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["benchmark_dataset", "source_tags", "start_system_metrics", "stream_summary"]

_log = logging.getLogger(__name__)

#: Protocol keys that already are a digest of the data (the first one present is used).
_DIGEST_KEYS = ("split_sha256", "sha256", "archive_sha256", "data_sha256")


def source_tags(git_commit: str) -> dict[str, str]:
    """MLflow's standard source tags for this process: the script run (``sys.argv[0]``, absolute;
    ``<interactive>`` in a REPL), ``LOCAL``, the commit and the user."""
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else "<interactive>"
    if script != "<interactive>":
        script = str(Path(script).resolve())
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = os.environ.get("USER", "unknown")
    tags = {"mlflow.source.name": script, "mlflow.source.type": "LOCAL", "mlflow.user": user}
    if git_commit and git_commit != "unknown":
        tags["mlflow.source.git.commit"] = git_commit
    return tags


def benchmark_dataset(protocol: Mapping[str, Any] | None, stream_summary: Mapping[str, Any] | None = None) -> Any:
    """The benchmark as an ``mlflow.entities.Dataset``, or None when nothing describes it.

    ``protocol``: our builders' record (``bm.protocol``); its name is ``protocol["benchmark"]``, its
    digest the data digest it carries (``split_sha256``...) else the SHA-256 of its canonical JSON
    (first 16 hex digits), its source the data root. ``stream_summary`` (experiences, classes,
    sizes) describes any other Avalanche benchmark, digested the same way.
    """
    from mlflow.entities import Dataset

    record = dict(protocol or stream_summary or {})
    if not record:
        return None
    canonical = json.dumps(record, sort_keys=True, default=str)
    digest = next((str(record[k]) for k in _DIGEST_KEYS if record.get(k)), None)
    digest = (digest or hashlib.sha256(canonical.encode()).hexdigest())[:16]
    name = str(record.get("benchmark") or record.get("name") or "benchmark")
    source = str(record.get("root") or record.get("data_root") or record.get("kit") or name)
    profile = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) <= 200}
    return Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": source}),
                   profile=json.dumps(profile, sort_keys=True, default=str))


def stream_summary(experience: Any) -> dict[str, Any] | None:
    """Experiences, classes and sizes of the training stream ``experience`` belongs to, for a
    benchmark without our ``protocol`` record (None when the stream cannot be listed)."""
    stream = getattr(experience, "origin_stream", None)
    try:
        exps = list(stream) if stream is not None else []
    except TypeError:  # a lazy stream
        return None
    if not exps:
        return None
    classes = [sorted(int(c) for c in getattr(e, "classes_in_this_experience", []) or []) for e in exps]
    sizes = [len(e.dataset) for e in exps]
    benchmark = getattr(stream, "benchmark", None)
    return {"name": type(benchmark).__name__ if benchmark is not None else "benchmark", "stream": getattr(stream, "name", ""),
            "experiences": len(exps), "train_samples": sum(sizes), "class_order": json.dumps(classes),
            "samples_per_experience": json.dumps(sizes)}


def start_system_metrics(run_id: str, tracking_uri: str, device: Any) -> Any:
    """Start MLflow's system-metrics monitor for ``run_id`` when ``device`` is CUDA (returns it;
    call ``finish()`` when the run ends); None on other devices or when the monitor cannot run
    (``psutil`` missing: a warning)."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as err:  # noqa: BLE001 — monitoring must never stop training
        _log.warning("MLflow system metrics are off: %s: %s", type(err).__name__, err)
        return None
    return monitor
