"""Send a run that no store accepted to an MLflow store.

When neither the requested store nor the fallback accepts a run, :class:`MLflowLogger` keeps
everything in a folder (named in its error log): ``metrics.jsonl``, ``params.json``,
``tags.json``, ``run.json`` (experiment, run name, status) and the artifacts. Replay it with::

    python -m avalanche_promptmoe.logging.replay <folder> [--tracking-uri URI] [--experiment NAME]

The default store is ``sqlite:///<cwd>/mlruns/mlflow.db``; the default experiment is the one the
run was meant for. Prints the new run id.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from avalanche_promptmoe.logging.mlflow_store import open_run, resolve_uri

__all__ = ["main", "replay"]

_JOURNAL = {"metrics.jsonl", "params.json", "tags.json", "run.json"}
_BATCH = 500


def replay(dump: str | Path, tracking_uri: str | Path | None = None, experiment: str | None = None) -> str:
    """Creates a run in ``tracking_uri`` from a dump folder and returns its id.

    Raises:
        FileNotFoundError: ``dump`` is not a logger's dump folder (no ``metrics.jsonl``/``params.json``).
    """
    folder = Path(dump)
    missing = [n for n in ("metrics.jsonl", "params.json", "tags.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not an MLflowLogger dump folder (missing {missing})")
    run_info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    name = experiment or run_info.get("experiment_name") or "avalanche_promptmoe"
    store = open_run(resolve_uri(tracking_uri), name, run_info.get("run_name"))
    client = store.client
    params = [Param(k, str(v)) for k, v in json.loads((folder / "params.json").read_text()).items()]
    tags = [RunTag(k, str(v)) for k, v in json.loads((folder / "tags.json").read_text()).items()]
    tags.append(RunTag("replayed_from", str(folder.resolve())))
    for start in range(0, len(params), 100):
        client.log_batch(store.run_id, params=params[start : start + 100], synchronous=True)
    for start in range(0, len(tags), 100):
        client.log_batch(store.run_id, tags=tags[start : start + 100], synchronous=True)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]
    for start in range(0, len(metrics), _BATCH):
        client.log_batch(store.run_id, metrics=metrics[start : start + _BATCH], synchronous=True)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.as_posix() in _JOURNAL:
            continue
        parent = relative.parent.as_posix()
        client.log_artifact(store.run_id, str(path), None if parent == "." else parent)
    client.set_terminated(store.run_id, run_info.get("status") or "FINISHED")
    return store.run_id


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", help="the folder named in the logger's error message")
    parser.add_argument("--tracking-uri", default=None, help="target store (default: sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--experiment", default=None, help="target experiment (default: the run's own)")
    args = parser.parse_args(argv)
    run_id = replay(args.dump, args.tracking_uri, args.experiment)
    print(run_id)
    return run_id


if __name__ == "__main__":
    main()
