"""Shared driver of the experiment scripts: config → benchmark → strategy → MLflow.

A run's configuration is a TOML file per (benchmark, method) in ``experiments/configs/<benchmark>/``
with three sections, each checked against what it configures:

* ``[benchmark]`` — the builder's keywords (``n_experiences``, ``seed``, ...);
* ``[strategy]``  — ``PromptStrategyBase`` keywords (``backbone``, ``train_mb_size``, ...);
* ``[method]``    — the method's config fields (``top_k``, ``delta``, ...).

``--set section.key=value`` overrides one entry (TOML value syntax; an unknown key is an error).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = PROJECT_ROOT / "experiments" / "configs"
METHOD_NAMES = ("hash", "smope", "hlgp", "hide", "linear", "seq", "joint")
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
    """Read ``experiments/configs/<benchmark>/<method>.toml`` (or ``path``)."""
    path = Path(path) if path else CONFIG_ROOT / benchmark / f"{method}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"config: {path} does not exist")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    unknown = sorted(set(cfg) - {"benchmark", "strategy", "method"})
    if unknown:
        raise ValueError(f"config {path}: unknown sections {unknown}; expected benchmark, strategy, method")
    return {s: dict(cfg.get(s, {})) for s in ("benchmark", "strategy", "method")}


def apply_overrides(cfg: dict[str, dict[str, Any]], overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Apply ``section.key=value`` overrides; the value is parsed as TOML (``3``, ``0.1``, ``[0, 1]``,
    ``"text"``), falling back to a plain string."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set: expected section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in cfg:
            raise ValueError(f"--set: unknown section {section!r} in {item!r}; use benchmark, strategy or method")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        cfg[section][name] = value
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
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config entry")
    p.add_argument("--seed", type=int, default=None, help="seed of the run (class order and training)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--run-dir", help="checkpoints and outputs (default runs/<benchmark>/<method>/seed<k>)")
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
        cfg["strategy"]["checkpoint_path"] = args.checkpoint_path
    run_dir = Path(args.run_dir or PROJECT_ROOT / "runs" / spec.name / args.method / f"seed{seed}")
    run_dir.mkdir(parents=True, exist_ok=True)

    main_process = init_distributed(args, seed)

    bench_kwargs = dict(cfg["benchmark"])
    if spec.name == "tinyimagenet32":
        bench_kwargs[spec.root_keyword] = args.data_root or args.kit
    else:
        if not args.data_root:
            raise SystemExit(f"--data-root is required for {spec.name} (see README: datasets)")
        bench_kwargs[spec.root_keyword] = args.data_root
    benchmark = spec.builder(**bench_kwargs)  # before seeding: Avalanche builders may touch RNGs

    strategy_kwargs = dict(cfg["strategy"])
    if strategy_kwargs.get("backbone") == "kit-reference":
        from avalanche_promptmoe.benchmarks import load_reference_backbone

        strategy_kwargs["backbone"] = load_reference_backbone(args.kit)
    strategy_kwargs.setdefault("checkpoint_dir", str(run_dir))
    loggers: list[Any] = [_ProgressLogger()] if main_process else []
    mlflow_logger = None
    if not args.no_mlflow and main_process:  # under torchrun only rank 0 logs
        from avalanche_promptmoe.logging import MLflowLogger

        resolved = {"benchmark": {**cfg["benchmark"], "name": spec.name}, "strategy": cfg["strategy"],
                    "method": {"name": args.method, **resolved_method_settings(strategy_cls, cfg["method"])}}
        mlflow_logger = MLflowLogger(
            experiment_name=args.experiment or spec.name, tracking_uri=args.tracking_uri,
            run_name=f"{args.method}-seed{seed}", params=resolved,
            tags={"method": args.method, "benchmark": spec.name, "seed": str(seed)},
        )
        loggers.append(mlflow_logger)
    strategy = strategy_cls.from_config(
        {**strategy_kwargs, "num_classes": spec.num_classes, "seed": seed, "device": args.device,
         "method": cfg["method"]},
        loggers=loggers,
    )
    summary = train_and_evaluate(strategy, benchmark, run_dir, resume=args.resume)
    summary.update(method=args.method, benchmark=spec.name, seed=seed)
    if main_process:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if mlflow_logger is not None:
        _log_final(mlflow_logger, strategy, summary)
        mlflow_logger.close()
    log.info("%s on %s (seed %d): FAA %.4f  CAA %.4f  FFM %.4f  FFM(HiDe) %.4f  (%.0f s)", args.method, spec.name,
             seed, summary["faa"], summary["caa"], summary["ffm"], summary["ffm_hide"], summary["wall_time_s"])
    return summary


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


def train_and_evaluate(strategy: Any, benchmark: Any, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train on each experience, evaluate on the tasks seen so far, checkpoint after each one."""
    from tqdm.auto import tqdm

    from avalanche_promptmoe.metrics import summarize

    last = run_dir / "last.pt"
    start = strategy.resume_from(last) if resume and last.is_file() else 0
    if resume and not last.is_file():
        log.warning("--resume: no checkpoint at %s; starting from the first experience", last)
    t0 = time.perf_counter()
    stream = benchmark.train_stream
    for i in tqdm(range(start, len(stream)), desc=f"{strategy.method_name} experiences", initial=start, total=len(stream)):
        strategy.train(stream[i], eval_streams=[])
        strategy.eval(benchmark.test_stream[: i + 1])
        strategy.save_checkpoint(last)
    matrix = _task_matrix(strategy)
    summary = {k: float(v) for k, v in summarize(matrix).items()}
    stream_acc = strategy.evaluator.get_last_metrics()
    key = next((k for k in stream_acc if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")), None)
    summary.update(
        sample_weighted_stream_acc=float(stream_acc[key]) if key else float("nan"),
        wall_time_s=time.perf_counter() - t0,
        trainable_params=int(strategy.trainable_parameter_count()),
        accuracy_matrix=matrix.tolist(),
        resumed_from=start,
    )
    return summary


def _task_matrix(strategy: Any) -> Any:
    metric = next(m for m in strategy.evaluator.metrics if type(m).__name__ == "TaskAveragedMetrics")
    return metric.accuracy_matrix


def _log_final(logger: Any, strategy: Any, summary: dict[str, Any]) -> None:
    usage = getattr(getattr(strategy, "routing_history", None), "usage", None)
    if usage is not None:
        logger.log_expert_usage(usage.counts)
    for key in ("faa", "caa", "ffm", "ffm_hide", "wall_time_s", "trainable_params", "sample_weighted_stream_acc"):
        logger.log_single_metric(f"final/{key}", float(summary[key]), 0)
    logger.flush()
    logger.log_report(summary)


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
