"""Open ``mlflow ui`` on a run store in a headless Chromium and take a screenshot.

What a user sees after a run (issue #21 item 7): the experiment's training runs with FAA / CAA /
FFM / FFM-HiDe, the source script, the commit, the user and the benchmark dataset. By default the
script makes a fresh store with two tiny runs (Hash and seq on a random tiny ViT and a synthetic
3-experience stream, seconds on a CPU) so that it needs no data; ``--store`` opens an existing one.

    python experiments/mlflow_ui_screenshot.py --out docs/mlflow_ui.png
    python experiments/mlflow_ui_screenshot.py --store mlruns --out runs.png   # your own runs

Needs Chromium (Debian: ``apt-get install chromium``; ``--chromium PATH`` otherwise). Not part of
the tests (CI has no browser); tests/test_mlflow_ui_record.py checks the same record through the
MLflow client.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
)

#: A loopback address other than 127.0.0.1: on "localhost" MLflow's UI opens its Assistant panel,
#: which hides a third of the runs table
HOST = "127.0.0.2"


def tiny_runs(store: Path, experiment: str) -> str:
    """Two tiny logged runs (hash, seq) in a fresh SQLite store under ``store``; returns its URI."""
    import timm
    import torch
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset
    from torch.utils.data import TensorDataset

    from avalanche_promptmoe import HashPromptStrategy, SequentialPromptStrategy
    from avalanche_promptmoe.logging import MLflowLogger

    def data(seed: int, per_class: int) -> TensorDataset:
        patterns = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
        y = torch.arange(6).repeat_interleave(per_class)
        x = torch.nn.functional.interpolate(patterns[y], size=(32, 32)) + 0.8 * torch.randn(
            len(y), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        ds = TensorDataset(x, y)
        ds.targets = y.tolist()
        return as_classification_dataset(ds)

    bm = class_incremental_benchmark({"train": data(1, 16), "test": data(2, 8)}, class_order=list(range(6)),
                                     num_experiences=3)
    bm.protocol = {"benchmark": "synthetic_blocks", "n_experiences": 3, "classes": 6, "seed": 0}
    uri = f"sqlite:///{store / 'mlflow.db'}"
    settings = {
        HashPromptStrategy: dict(layers=(0, 1), num_experts=4, length=2, top_k=2, tii_epochs=2,
                                 tii_replay_epochs=1, tap_epochs=1, samples_per_class=8, n_centroids=2,
                                 tap_centroids=2),
        SequentialPromptStrategy: dict(layers=(0, 1), length=2),
    }
    for cls, kw in settings.items():
        torch.manual_seed(0)
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                                embed_dim=64, depth=3, num_heads=2)
        logger = MLflowLogger(experiment, tracking_uri=uri, run_name=f"{cls.method_name}-tiny", benchmark=bm)
        strategy = cls(backbone=vit, num_classes=6, train_mb_size=16, train_epochs=1, lr=0.01, device="cpu",
                       loggers=[logger], progress=False, **kw)
        for exp in bm.train_stream:
            strategy.train(exp, eval_streams=[])
            strategy.eval(bm.test_stream)
        logger.close()
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow ui did not answer at {url} within {timeout_s:.0f} s")


def screenshot(url: str, out: Path, chromium: str, size: str, wait_ms: int) -> None:
    profile = tempfile.mkdtemp(prefix="chromium_profile_")
    try:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
             f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
            check=True, capture_output=True, timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a folder holding mlflow.db (default: a fresh tiny store)")
    parser.add_argument("--experiment", default="mlflow-ui-demo")
    parser.add_argument("--out", type=Path, default=Path("mlflow_ui.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    parser.add_argument("--size", default="1600,900", help="window size W,H")
    parser.add_argument("--wait-ms", type=int, default=20000, help="time the page gets to render")
    args = parser.parse_args(argv)

    if args.store is None:
        store = Path(tempfile.mkdtemp(prefix="mlflow_ui_demo_"))
        uri = tiny_runs(store, args.experiment)
    else:
        store = args.store
        uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    from avalanche_promptmoe.logging.mlflow_store import RESULTS_VIEW_KEY

    experiment = MlflowClient(uri).get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"--experiment: no experiment {args.experiment!r} in {uri}")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", HOST,
         "--port", str(port), "--workers", "1", "--allowed-hosts", f"{HOST}:{port},{HOST}",
         "--cors-allowed-origins", f"http://{HOST}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,  # its workers too
    )
    try:
        base = f"http://{HOST}:{port}"
        wait_for(base + "/health")
        url = f"{base}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={RESULTS_VIEW_KEY}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(url, args.out.resolve(), args.chromium, args.size, args.wait_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"{args.out} ({url})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
