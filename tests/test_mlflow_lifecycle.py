"""A run's life in MLflow tells the truth: FAILED / KILLED / FINISHED in the store and in report.json,
resume continues the same run (steps and wall time), concurrent fresh stores, replay of a dump,
and only store errors switch stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

mlflow = pytest.importorskip("mlflow")

from cl_utils import make_benchmark, tiny_backbone  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow_utils import fresh_store  # noqa: E402

from avalanche_promptmoe import LinearProbeStrategy  # noqa: E402
from avalanche_promptmoe.logging import MLflowFallbackWarning, MLflowLogger  # noqa: E402
from avalanche_promptmoe.logging.replay import main as replay_main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "HF_HUB_OFFLINE": "1",
       "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _report(uri: str, run_id: str, tmp: Path) -> dict:
    path = MlflowClient(uri).download_artifacts(run_id, "report.json", str(tmp))
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------- statuses
_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from avalanche_promptmoe.logging import MLflowLogger
    uri, mode = sys.argv[1], sys.argv[2]
    logger = MLflowLogger("life", tracking_uri=uri, run_name=mode)
    logger.log_single_metric("loss", 1.0, 1)
    logger.flush()
    if mode == "exception":
        raise ValueError("the script dies")
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_script_exception_is_failed_and_sigterm_is_killed(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path / "store")
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    procs = {mode: subprocess.Popen([sys.executable, str(script), uri, mode], env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for mode in ("exception", "sigterm")}
    assert procs["sigterm"].stdout.readline().strip() == "ready"
    procs["sigterm"].send_signal(signal.SIGTERM)
    codes = {mode: p.wait(timeout=120) for mode, p in procs.items()}
    assert codes == {"exception": 1, "sigterm": 128 + signal.SIGTERM}, {m: p.stderr.read() for m, p in procs.items()}
    runs = {r.info.run_name: r for r in _runs(uri, "life")}
    assert {name: r.info.status for name, r in runs.items()} == {"exception": "FAILED", "sigterm": "KILLED"}
    for name, run in runs.items():
        assert _report(uri, run.info.run_id, tmp_path / name)["status"] == run.info.status


def test_context_manager_and_runner_record_failed_and_killed(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    import runner

    uri = fresh_store(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt), MLflowLogger("ctx", tracking_uri=uri, run_name="ctrl-c") as logger:
        logger.log_single_metric("loss", 1.0, 1)
        raise KeyboardInterrupt
    assert logger.status == "KILLED"
    for name, error, status in (("crash", RuntimeError("boom"), "FAILED"), ("term", KeyboardInterrupt(), "KILLED")):
        logger = MLflowLogger("ctx", tracking_uri=uri, run_name=name)
        with pytest.raises(type(error)), runner._run_status(logger):
            logger.log_single_metric("loss", 1.0, 1)
            raise error
        assert logger.status == status
    logger = MLflowLogger("ctx", tracking_uri=uri, run_name="ok")
    with runner._run_status(logger) as finish:
        finish({"faa": 0.5})
    statuses = {r.info.run_name: r.info.status for r in _runs(uri, "ctx")}
    assert statuses == {"ctrl-c": "KILLED", "crash": "FAILED", "term": "KILLED", "ok": "FINISHED"}
    with pytest.raises(ValueError, match="status"):
        MLflowLogger("ctx", tracking_uri=uri).close(status="DONE")


# ---------------------------------------------------------------------------------- resume
_KILLED_PART = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from cl_utils import make_benchmark, tiny_backbone
    from avalanche_promptmoe import LinearProbeStrategy
    from avalanche_promptmoe.logging import MLflowLogger
    uri, ckpt = sys.argv[1], sys.argv[2]
    bm = make_benchmark(n_exp=2, per_class=8, test_per_class=4)
    logger = MLflowLogger("resume", tracking_uri=uri, run_name="linear")
    s = LinearProbeStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1,
                            device="cpu", loggers=[logger], progress=False, lr=0.01)
    s.train(bm.train_stream[0], eval_streams=[])
    s.eval(bm.test_stream)
    time.sleep(0.5)
    s.save_checkpoint(ckpt)
    print(logger.run_id, logger.wall_time_s, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_resume_after_kill_9_continues_the_same_run(tmp_path: Path) -> None:
    uri = fresh_store(tmp_path / "store")
    script, ckpt = tmp_path / "part1.py", tmp_path / "last.pt"
    script.write_text(_KILLED_PART)
    out = subprocess.run([sys.executable, str(script), uri, str(ckpt)], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr
    run_id, killed_wall = out.stdout.split()
    (before,) = _runs(uri, "resume")
    assert before.info.status == "RUNNING" and before.info.run_id == run_id
    client = MlflowClient(uri)
    steps_before = [m.step for m in client.get_metric_history(run_id, "Top1_Acc_Stream/eval_phase/test_stream")]

    bm = make_benchmark(n_exp=2, per_class=8, test_per_class=4)
    logger = MLflowLogger("resume", tracking_uri=uri, run_name="linear")
    s = LinearProbeStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1,
                            device="cpu", loggers=[logger], progress=False, lr=0.01)
    assert s.resume_from(ckpt) == 1
    s.train(bm.train_stream[1], eval_streams=[])
    s.eval(bm.test_stream)
    logger.close()

    (after,) = _runs(uri, "resume")  # no second run, not even an empty one
    assert after.info.run_id == run_id and after.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "Top1_Acc_Stream/eval_phase/test_stream")]
    # equal experiences: the continued run's step is twice the killed part's, not a restart from 0
    assert len(steps) == 2 and steps[0] == steps_before[0] > 0 and steps[1] == 2 * steps[0], steps
    assert after.data.metrics["final/wall_time_s"] > float(killed_wall) >= 0.5
    assert after.data.tags["resumed"] == "true"


# ---------------------------------------------------------------------------------- stores
_CONCURRENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from avalanche_promptmoe.logging.mlflow_store import open_run, resolve_uri
    directory, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    (directory.parent / f"ready_{me}").touch()
    while not (directory.parent / f"ready_{other}").exists():  # start together
        time.sleep(0.01)
    store = open_run(resolve_uri(directory), "both", me)  # how MLflowLogger starts its run
    store.client.set_terminated(store.run_id)
    print("started", flush=True)
    """
)


def test_two_runs_starting_on_a_fresh_sqlite_store_both_land_in_it(tmp_path: Path) -> None:
    script = tmp_path / "start.py"
    script.write_text(_CONCURRENT)
    store = tmp_path / "fresh"
    procs = [subprocess.Popen([sys.executable, str(script), str(store), me, other], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for me, other in (("a", "b"), ("b", "a"))]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [o.strip() for o, _ in outs] == ["started", "started"], [e[-2000:] for _, e in outs]
    runs = _runs(f"sqlite:///{store}/mlflow.db", "both")
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("a", "FINISHED"), ("b", "FINISHED")]


def test_dump_when_no_store_is_writable_replays_with_the_documented_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the stores' folders should be")
    with pytest.warns(MLflowFallbackWarning):
        logger = MLflowLogger("lost", tracking_uri=blocker / "store", fallback_dir=blocker / "fallback", run_name="r")
        logger.log_config({"method": {"top_k": 2}})
        logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream", 0.75, 10)
        logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream", 0.5, 20)
        logger.close()
    assert logger.run_id is None
    dump = next(Path(r.args[0]) for r in caplog.records if "no MLflow store accepted" in r.getMessage())
    uri = fresh_store(tmp_path / "good")
    run_id = replay_main([str(dump), "--tracking-uri", uri])
    (run,) = _runs(uri, "lost")
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["method.top_k"] == "2"
    history = MlflowClient(uri).get_metric_history(run_id, "Top1_Acc_Stream/eval_phase/test_stream")
    assert [(m.step, m.value) for m in history] == [(10, 0.75), (20, 0.5)]
    assert _report(uri, run_id, tmp_path / "dl")["status"] == "FINISHED"


def test_a_warning_turned_error_propagates_instead_of_switching_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = fresh_store(tmp_path / "store")
    logger = MLflowLogger("strict", tracking_uri=uri, fallback_dir=tmp_path / "fallback")
    assert logger.run_id is not None
    client = logger._store.client
    original = client.log_batch

    def deprecated(*args, **kwargs):
        warnings.warn("this MLflow call is deprecated", DeprecationWarning, stacklevel=2)
        return original(*args, **kwargs)

    monkeypatch.setattr(client, "log_batch", deprecated)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        logger.log_single_metric("loss", 1.0, 1)
        with pytest.raises(DeprecationWarning, match="deprecated"):
            logger.flush()
    assert not logger.fell_back and logger.tracking_uri == uri
    assert not (tmp_path / "fallback").exists()
    monkeypatch.undo()
    logger.close()
    assert MlflowClient(uri).get_run(logger.run_id).data.metrics["loss"] == 1.0


def test_logger_state_round_trips_through_a_strategy_checkpoint(tmp_path: Path) -> None:
    """The strategy checkpoint carries the logger's run; a second logger that already opened a run of
    its own gives it up (deleted) for the continued one."""
    uri = fresh_store(tmp_path / "store")
    bm = make_benchmark(n_exp=2, per_class=8, test_per_class=4)
    first = MLflowLogger("ckpt", tracking_uri=uri)
    s = LinearProbeStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1,
                            device="cpu", loggers=[first], progress=False, lr=0.01)
    s.train(bm.train_stream[0], eval_streams=[])
    s.save_checkpoint(tmp_path / "c.pt")
    first.close(status="KILLED")
    second = MLflowLogger("ckpt", tracking_uri=uri)
    own = second.run_id  # opened a run of its own before resuming
    t = LinearProbeStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1,
                            device="cpu", loggers=[second], progress=False, lr=0.01)
    t.resume_from(tmp_path / "c.pt")
    assert second.run_id == first.run_id != own
    second.close()
    client = MlflowClient(uri)
    assert client.get_run(own).info.lifecycle_stage == "deleted"
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert torch.isfinite(torch.tensor(second.wall_time_s))


def test_settings_changed_on_resume_become_override_tags(tmp_path: Path) -> None:
    """MLflow params are immutable: on resume with another value the run keeps the first one and
    records the new one as a tag (also for a strategy's ``resume_overrides``); no fallback."""
    uri = fresh_store(tmp_path / "store")
    first = MLflowLogger("override", tracking_uri=uri, params={"method": {"lr": 0.01, "top_k": 2}})
    first.before_training(_Strategy())
    state = first.state_dict()
    second = MLflowLogger("override", tracking_uri=uri, params={"method": {"lr": 0.02, "top_k": 2}})
    second.load_state_dict(state)
    strategy = _Strategy()
    strategy.resume_overrides = {"tap_epochs": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("error", MLflowFallbackWarning)
        second.before_training(strategy)
        second.close()
    run = MlflowClient(uri).get_run(first.run_id)
    assert second.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.params["method.lr"] == "0.01" and run.data.tags["resume_override.method.lr"] == "0.02"
    assert run.data.tags["resume_override.tap_epochs"] == "5"


class _Strategy:
    """The little of a strategy the logger's hooks read."""

    def __init__(self) -> None:
        self.plugins: list = []
