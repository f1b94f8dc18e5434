"""Shared driver of the experiment scripts: config → benchmark → strategy → MLflow.

A run's configuration is a TOML file per (benchmark, method) in ``experiments/configs/<benchmark>/``
with three sections, each checked against what it configures:

* ``[benchmark]`` — the builder's keywords (``n_experiences``, ``seed``, ...);
* ``[strategy]``  — ``PromptStrategyBase`` keywords (``backbone``, ``train_mb_size``, ...);
* ``[method]``    — the method's config fields (``top_k``, ``delta``, ...).

``--set section.key=value`` overrides one entry. The value is a TOML value (``3``, ``0.1``, ``true``,
``[0, 1]``, ``{ depth = 2 }``, ``"text"``); a plain word or path without spaces or TOML punctuation
(``none``, ``timm``, ``vit_base_patch16_224.augreg_in21k``, ``~/w/vit.npz``) may stay unquoted and is
taken as a string. Anything else that is not valid TOML (``[0,``, ``.5``, ``1e``, ``True``) is refused
at once with the key and the TOML error; an unknown key is an error. A config file that is not valid
TOML is refused with its path and the line.

Runs write to ``--run-dir`` (default ``runs/<benchmark>/<method>/seed<k>`` under the current working
directory, never inside the source tree).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# importing the package also silences qpsolvers' "no QP solver found" import warning (narrowly)
from avalanche_promptmoe.jsonio import strict_json  # noqa: E402
from avalanche_promptmoe.paths import make_directory, user_path  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = PROJECT_ROOT / "experiments" / "configs"
METHOD_NAMES = ("hash", "smope", "hlgp", "hide", "linear", "seq", "joint", "l2p", "dualprompt", "codaprompt")
STRATEGY_KEYS = (
    "backbone", "pretrained", "checkpoint_path", "backbone_kwargs", "train_mb_size", "train_epochs",
    "eval_mb_size", "checkpoint_dir", "use_task_labels", "eval_every",
)
log = logging.getLogger("avalanche_promptmoe.experiments")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How a script builds its benchmark: the builder, its data-root keyword, the class count."""

    name: str
    builder: Callable[..., Any]
    num_classes: int
    root_keyword: str = "root"


def load_config(benchmark: str, method: str, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Read ``experiments/configs/<benchmark>/<method>.toml`` (or ``path``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid TOML (the message names the file and the line), an unknown section, or a
            section that is not a table.
    """
    path = Path(path) if path else CONFIG_ROOT / benchmark / f"{method}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"config: {path} does not exist")
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:  # its message ends with "(at line L, column C)"
        raise ValueError(f"config {path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"config {path}: not UTF-8 text ({exc})") from exc
    unknown = sorted(set(cfg) - {"benchmark", "strategy", "method"})
    if unknown:
        raise ValueError(f"config {path}: unknown sections {unknown}; expected benchmark, strategy, method")
    not_tables = [s for s in ("benchmark", "strategy", "method") if not isinstance(cfg.get(s, {}), dict)]
    if not_tables:
        raise ValueError(f"config {path}: {not_tables} must be tables ([section] headers), not plain values")
    return {s: dict(cfg.get(s, {})) for s in ("benchmark", "strategy", "method")}


#: An unquoted ``--set`` value taken as a string when it is not TOML: a word or path that starts with a
#: letter, ``_``, ``~``, ``/`` or ``.`` (not ``.`` + digit) and holds no whitespace or TOML punctuation.
_BARE_STRING = re.compile(r"(?![.][0-9])[A-Za-z_~/.][^\s\[\]{}\"'=,#]*")
#: Python spellings that must not silently become (truthy) strings
_PYTHONISMS = {"True": "true", "False": "false", "TRUE": "true", "FALSE": "false"}


def parse_override_value(key: str, raw: str) -> Any:
    """Parse the value of ``--set key=raw``: a TOML value, or a bare word / path kept as a string.

    Raises:
        ValueError: naming ``key``, with the TOML error, when ``raw`` is neither.
    """
    if raw in _PYTHONISMS:
        raise ValueError(f"--set {key}={raw}: TOML booleans are lowercase; write {key}={_PYTHONISMS[raw]}")
    if raw in ("None", "null"):
        raise ValueError(f"--set {key}={raw}: TOML has no null; leave the key out of the config for its default")
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError as exc:
        if _BARE_STRING.fullmatch(raw):
            return raw
        reason = re.sub(r"\(at line 1, column (\d+)\)", lambda m: f"(at character {int(m.group(1)) - 4})",
                        str(exc)).replace("end of document", "end of the value")
        raise ValueError(
            f"--set {key}={raw}: not a TOML value ({reason}); write numbers as 3 or 0.1, booleans as true, "
            f"lists as [0, 1], tables as {{ a = 1 }}, and text with spaces or punctuation in double quotes "
            f"(--set '{key}=\"...\"')"
        ) from None
    if set(parsed) != {"v"}:
        raise ValueError(f"--set {key}={raw!r}: one value expected, got several TOML lines")
    return parsed["v"]


def apply_overrides(cfg: dict[str, dict[str, Any]], overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Apply ``section.key=value`` overrides; the value is parsed by :func:`parse_override_value`
    (TOML, or a bare word / path as a string; anything else is an error naming the key)."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set: expected section.key=value, got {item!r}")
        key, raw = (part.strip() for part in item.split("=", 1))
        section, name = key.split(".", 1)
        if section not in cfg:
            raise ValueError(f"--set: unknown section {section!r} in {item!r}; use benchmark, strategy or method")
        cfg[section][name] = parse_override_value(key, raw)
    return cfg


def validate_config(cfg: dict[str, dict[str, Any]], spec: BenchmarkSpec, strategy_cls: Any) -> None:
    """Every key must be known to what it configures (no silent typos)."""
    from avalanche_promptmoe.training.config import config_fields

    params = inspect.signature(spec.builder).parameters
    allowed = {"benchmark": set(params) - {spec.root_keyword}, "strategy": set(STRATEGY_KEYS),
               "method": set(config_fields(strategy_cls.config_cls))}
    for section, keys in allowed.items():
        unknown = sorted(set(cfg[section]) - keys)
        if unknown:
            raise ValueError(f"config [{section}]: unknown keys {unknown}; known: {sorted(keys)}")


def build_parser(spec: BenchmarkSpec, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--method", choices=METHOD_NAMES, default="hash")
    p.add_argument("--data-root", help=f"dataset root for {spec.name} (see README)")
    p.add_argument("--checkpoint-path", help="local ViT weight file for the config's timm backbone")
    p.add_argument("--config", help="a TOML config instead of experiments/configs/<benchmark>/<method>.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config entry; VALUE is TOML (3, 0.1, true, [0, 1], \"text\") or a bare word/path")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (class order and training)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--allow-seed-change", action="store_true",
                   help="with --resume: continue a checkpoint made with another seed (recorded as an override)")
    p.add_argument("--run-dir", help="checkpoints and outputs (default ./runs/<benchmark>/<method>/seed<k>, "
                   "under the current directory)")
    p.add_argument("--verify-data", action="store_true",
                   help="decode every image file before training and list the bad ones (CUB-200, ImageNet-R; "
                   "CIFAR-100: md5 check)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlruns/mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment name (default: the benchmark)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--kit", default=None, help="offline kit folder (default ../shared/data)")
    return p


def run(spec: BenchmarkSpec, argv: Sequence[str] | None = None, description: str = "") -> dict[str, Any]:
    """Parse the CLI, run the benchmark, log to MLflow; returns the summary dict."""
    from avalanche_promptmoe.methods.registry import get_strategy_class

    args = build_parser(spec, description).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = apply_overrides(load_config(spec.name, args.method, args.config), args.set)
    strategy_cls = get_strategy_class(args.method)
    validate_config(cfg, spec, strategy_cls)
    if args.seed is not None:
        cfg["benchmark"]["seed"] = args.seed
    seed = int(cfg["benchmark"].get("seed", 0))
    if args.checkpoint_path:
        if cfg["strategy"].get("backbone") == "kit-reference":
            raise SystemExit(
                "--checkpoint-path: this config's backbone is 'kit-reference', the kit's own reference ViT (its "
                "weights come from --kit); drop --checkpoint-path, or give a timm backbone name with it "
                "(--set strategy.backbone=vit_base_patch16_224.augreg_in21k --checkpoint-path FILE)"
            )
        cfg["strategy"]["checkpoint_path"] = str(user_path(args.checkpoint_path))
    run_dir = user_path(args.run_dir) if args.run_dir else Path.cwd() / "runs" / spec.name / args.method / f"seed{seed}"
    make_directory(run_dir, "--run-dir")

    main_process = init_distributed(args, seed)

    bench_kwargs = dict(cfg["benchmark"])
    if spec.name == "tinyimagenet32":
        bench_kwargs[spec.root_keyword] = args.data_root or args.kit
    else:
        if not args.data_root:
            raise SystemExit(f"--data-root is required for {spec.name} (see README: datasets)")
        bench_kwargs[spec.root_keyword] = args.data_root
    bench_kwargs.update(data_check_kwargs(spec, args.verify_data))
    benchmark = spec.builder(**bench_kwargs)  # before seeding: Avalanche builders may touch RNGs
    bounds = protocol_bounds(spec, benchmark, bench_kwargs.get(spec.root_keyword))

    strategy_kwargs = dict(cfg["strategy"])
    if strategy_kwargs.get("backbone") == "kit-reference":
        from avalanche_promptmoe.kit import load_reference_backbone

        strategy_kwargs["backbone"] = load_reference_backbone(args.kit)
    strategy_kwargs.setdefault("checkpoint_dir", str(run_dir))
    loggers: list[Any] = [_ProgressLogger()] if main_process else []
    mlflow_logger = None
    if not args.no_mlflow and main_process:  # under torchrun only rank 0 logs
        from avalanche_promptmoe.logging import MLflowLogger

        resolved = {"benchmark": {**cfg["benchmark"], "name": spec.name}, "strategy": cfg["strategy"],
                    "method": {"name": args.method, **resolved_method_settings(strategy_cls, cfg["method"])}}
        if bounds is not None:
            resolved["bounds"] = bounds.as_dict()
        mlflow_logger = MLflowLogger(
            experiment_name=args.experiment or spec.name, tracking_uri=args.tracking_uri,
            run_name=f"{args.method}-seed{seed}", params=resolved,
            tags={"method": args.method, "benchmark": spec.name, "seed": str(seed)}, benchmark=benchmark,
        )
        loggers.append(mlflow_logger)
    with _run_status(mlflow_logger) as finish:
        strategy = strategy_cls.from_config(
            {**strategy_kwargs, "num_classes": spec.num_classes, "seed": seed, "device": args.device,
             "method": cfg["method"]},
            loggers=loggers, plugins=[RunClock()],
        )
        summary = train_and_evaluate(strategy, benchmark, run_dir, resume=args.resume,
                                     allow_seed_change=args.allow_seed_change)
        summary.update(method=args.method, benchmark=spec.name, seed=seed)
        if bounds is not None:
            summary["bounds"] = {**bounds.as_dict(), "source": bounds.source}
        if main_process:
            (run_dir / "summary.json").write_text(strict_json(summary))  # NaN -> null (strict JSON)
        finish(summary)
    log.info("%s on %s (seed %d): FAA %.4f  CAA %.4f  FFM %.4f  FFM(HiDe) %.4f  (%.0f s)", args.method, spec.name,
             seed, summary["faa"], summary["caa"], summary["ffm"], summary["ffm_hide"], summary["wall_time_s"])
    if bounds is not None:
        log.info("where it stands: %s  [bounds of this kit and protocol: %s]", bounds.describe(summary["faa"]),
                 bounds.source)
    return summary


def protocol_bounds(spec: BenchmarkSpec, benchmark: Any, root: Any) -> Any:
    """The kit protocol's stored bounds (seq, NCM, joint probe; ``avalanche_promptmoe.kit.kit_bounds``)
    for a Split Tiny-ImageNet-32 run, else ``None`` (another benchmark, or a protocol never measured)."""
    if spec.name != "tinyimagenet32" or not hasattr(benchmark, "protocol"):
        return None
    from avalanche_promptmoe.kit import kit_bounds

    found = kit_bounds(benchmark.protocol, root)
    if found is None:
        log.info("no stored bounds for this kit and protocol (python -m avalanche_promptmoe.kit build measures them)")
    return found


def data_check_kwargs(spec: BenchmarkSpec, verify: bool) -> dict[str, Any]:
    """The builder keywords that ``--verify-data`` turns on: ``verify=True`` (decode every image) where
    the builder has it, else ``check_integrity=True`` (CIFAR-100's md5); the kit is checksummed and
    decoded in full when its cache is built, so it needs none."""
    if not verify:
        return {}
    params = inspect.signature(spec.builder).parameters
    for name in ("verify", "check_integrity"):
        if name in params:
            return {name: True}
    log.info("--verify-data: %s has no per-file check (the kit is checksummed when its cache is built)", spec.name)
    return {}


def resolved_method_settings(strategy_cls: Any, method: dict[str, Any]) -> dict[str, Any]:
    """Every method setting the run uses, defaults included (so that runs whose code defaults differ
    are told apart in MLflow), plus the section's other keys as given."""
    from avalanche_promptmoe.training.config import config_fields, replace_config

    fields = set(config_fields(strategy_cls.config_cls))
    own = {k: v for k, v in method.items() if k in fields}
    return {**replace_config(strategy_cls.config_cls(), own).to_dict(),
            **{k: v for k, v in method.items() if k not in fields}}


def init_distributed(args: argparse.Namespace, seed: int) -> bool:
    """Under ``torchrun`` (``WORLD_SIZE > 1``) initialise ``torch.distributed`` through Avalanche's
    ``DistributedHelper`` (NCCL on CUDA, one GPU per local rank; gloo on CPU). Returns whether this
    process is rank 0."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    import torch
    from avalanche.distributed import DistributedHelper

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    use_cuda = device.startswith("cuda")
    DistributedHelper.init_distributed(seed, use_cuda=use_cuda)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    log.info("torch.distributed: rank %d of %d on %s", DistributedHelper.rank, DistributedHelper.world_size, device)
    return DistributedHelper.is_main_process


def train_and_evaluate(strategy: Any, benchmark: Any, run_dir: Path, *, resume: bool = False,
                       allow_seed_change: bool = False) -> dict[str, Any]:
    """Train on each experience, evaluate on the tasks seen so far, checkpoint after each one.

    With ``resume``, the run folder's ``last.pt`` must have the strategy's seed (else ``ValueError``
    naming both, unless ``allow_seed_change``) and the benchmark's class order for the experiences it
    trained (else ``ValueError`` naming both orders)."""
    from tqdm.auto import tqdm

    from avalanche_promptmoe.logging.strategy_info import final_metrics, task_averaged_metric

    last = run_dir / "last.pt"
    start = strategy.resume_from(last, allow_seed_change=allow_seed_change) if resume and last.is_file() else 0
    if resume and not last.is_file():
        log.warning("--resume: no checkpoint at %s; starting from the first experience", last)
    check_class_order(strategy, benchmark, last, allow_seed_change=allow_seed_change)
    t0 = time.perf_counter()
    stream = benchmark.train_stream
    for i in tqdm(range(start, len(stream)), desc=f"{strategy.method_name} experiences", initial=start, total=len(stream)):
        strategy.train(stream[i], eval_streams=[])
        strategy.eval(benchmark.test_stream[: i + 1])
        strategy.save_checkpoint(last)
    final = final_metrics(strategy)  # the same figures the MLflow logger records as final/*
    if final is None:
        raise RuntimeError("the accuracy matrix is incomplete after the last experience (TaskAveragedMetrics missing?)")
    summary: dict[str, Any] = {"sample_weighted_stream_acc": float("nan"), **final[0]}
    summary.update(
        wall_time_s=_elapsed_s(strategy, t0),
        trainable_params=int(summary["trainable_params"]),
        accuracy_matrix=task_averaged_metric(strategy).accuracy_matrix.tolist(),
        resumed_from=start,
    )
    diagnostics = getattr(strategy, "diagnostics", None)  # method-specific figures (Hash: its modulator)
    if callable(diagnostics):
        summary.update(diagnostics())
    if "seed" in getattr(strategy, "resume_overrides", {}):  # the figures come from both seeds: say so
        summary["seed_override"] = dict(zip(("checkpoint", "now"), strategy.resume_overrides["seed"], strict=True))
    return summary


def check_class_order(strategy: Any, benchmark: Any, path: Path, *, allow_seed_change: bool = False) -> None:
    """The classes the strategy trained are the benchmark's first experiences' (same seed, same order)."""
    from avalanche_promptmoe.training.experience import experience_classes

    trained = [sorted(c) for c in strategy.task_classes]
    stream = benchmark.train_stream
    expected = [experience_classes(stream[i]) for i in range(min(len(trained), len(stream)))]
    if trained == expected or allow_seed_change:
        return
    raise ValueError(
        f"--resume: {path} trained the classes {trained}, but this benchmark's first experiences hold {expected} "
        f"(another seed or class order); resume with the checkpoint's --seed and config, or start a new --run-dir"
    )


def _plugin_base() -> type:
    from avalanche.core import SupervisedPlugin

    return SupervisedPlugin


class RunClock(_plugin_base()):  # type: ignore[misc]
    """Wall time of a run across ``--resume``: a plugin whose state (seconds so far) travels in the
    strategy checkpoint, so that ``summary.json``'s ``wall_time_s`` includes the killed part."""

    def __init__(self) -> None:
        super().__init__()
        self._saved = 0.0
        self._t0 = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return self._saved + time.perf_counter() - self._t0

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed_s}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._saved, self._t0 = float(state["elapsed_s"]), time.perf_counter()


def _elapsed_s(strategy: Any, t0: float) -> float:
    """The run's wall time: its :class:`RunClock` (resumes included), else since ``t0``."""
    clock = next((p for p in strategy.plugins if isinstance(p, RunClock)), None)
    return time.perf_counter() - t0 if clock is None else clock.elapsed_s


@contextlib.contextmanager
def _run_status(logger: Any) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Ends the MLflow run with the truth: FINISHED after ``finish(summary)``, FAILED on an exception,
    KILLED on Ctrl-C or SIGTERM (the library's handler raises ``SystemExit(143)``). The logger itself
    logs the settings, expert usage and ``final/*`` metrics; the runner adds the summary report."""
    from avalanche_promptmoe.logging.lifecycle import status_of

    def finish(summary: dict[str, Any]) -> None:
        if logger is not None:
            logger.log_report(summary)

    try:
        yield finish
    except BaseException as err:
        if logger is not None:
            logger.close(status=status_of(err))
        raise
    if logger is not None:
        logger.close(status="FINISHED")


class _ProgressLogger:
    """A quiet Avalanche logger: prints the stream accuracy after each evaluation."""

    def log_metrics(self, metric_values: list[Any]) -> None:
        for mv in metric_values:
            if mv.name.startswith("FAA/eval_phase"):
                print(f"  {mv.name}: {mv.value:.4f}", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)
