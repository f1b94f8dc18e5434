"""The recipe table of docs/methods.md ("Recipes") is what every benchmark config runs (issue #12).

The table is parsed from the docs; each config is loaded the way the experiment scripts load it
(``runner.load_config`` → ``apply_overrides`` → ``validate_config`` → ``resolved_method_settings``,
the builder's and the strategy's defaults filled in) and must resolve to the table's values, state
exactly the table's keys, and name every setting its method trains with.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from runner import (  # noqa: E402
    BenchmarkSpec,
    apply_overrides,
    load_config,
    resolved_method_settings,
    validate_config,
)

from avalanche_promptmoe.benchmarks import split_cifar100, split_cub200, split_imagenet_r  # noqa: E402
from avalanche_promptmoe.methods.registry import get_strategy_class  # noqa: E402
from avalanche_promptmoe.training.base_strategy import PromptStrategyBase, _unwrapped  # noqa: E402
from avalanche_promptmoe.training.hide import HiDeConfig  # noqa: E402

SPECS = {
    "cifar100": BenchmarkSpec("cifar100", split_cifar100, num_classes=100),
    "cub200": BenchmarkSpec("cub200", split_cub200, num_classes=200),
    "imagenet_r": BenchmarkSpec("imagenet_r", split_imagenet_r, num_classes=200),
}
METHODS = ("hash", "smope", "hlgp", "hide", "linear", "seq", "joint", "l2p", "dualprompt", "codaprompt")
CONFIGS = [(b, m) for b in SPECS for m in METHODS]


def recipe_table() -> dict[str, Any]:
    """The toml block after the ``recipe-table`` marker in docs/methods.md."""
    text = (ROOT / "docs" / "methods.md").read_text()
    marker = text.index("<!-- recipe-table")
    block = re.search(r"```toml\n(.*?)```", text[marker:], re.S)
    assert block, "docs/methods.md: no ```toml block after the recipe-table marker"
    return tomllib.loads(block.group(1))


TABLE = recipe_table()


def recipe(benchmark: str, method: str) -> dict[str, dict[str, Any]]:
    return {**TABLE["shared"].get(method, {}), **TABLE[benchmark][method]}


def resolved(benchmark: str, method: str) -> dict[str, Any]:
    """``section.key → value`` of everything a run of the config uses, defaults included."""
    spec = SPECS[benchmark]
    cfg = apply_overrides(load_config(benchmark, method), [])
    cls = get_strategy_class(method)
    validate_config(cfg, spec, cls)
    out: dict[str, Any] = {}
    params = inspect.signature(spec.builder).parameters
    bench = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    out.update({f"benchmark.{k}": v for k, v in {**bench, **cfg["benchmark"]}.items()})
    base = inspect.signature(_unwrapped(PromptStrategyBase.__init__)).parameters
    strat = {k: p.default for k, p in base.items() if p.default is not inspect.Parameter.empty}
    out.update({f"strategy.{k}": v for k, v in {**strat, **cfg["strategy"]}.items()})
    out.update({f"method.{k}": v for k, v in resolved_method_settings(cls, cfg["method"]).items()})
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def test_table_covers_exactly_the_configs_and_every_entry_is_sourced():
    on_disk = {(p.parent.name, p.stem) for b in SPECS for p in (ROOT / "experiments" / "configs" / b).glob("*.toml")}
    in_table = {(b, m) for b in SPECS for m in TABLE.get(b, {})}
    assert on_disk == in_table == set(CONFIGS)
    for b, m in CONFIGS:
        for key, entry in recipe(b, m).items():
            assert set(entry) <= {"value", "none", "source", "why"}, (b, m, key)
            assert ("value" in entry) != bool(entry.get("none")), f"{b}/{m} {key}: give value or none = true"
            assert entry.get("source", "").strip(), f"{b}/{m} {key}: no source"


@pytest.mark.parametrize(("benchmark", "method"), CONFIGS)
def test_config_resolves_to_the_recipe(benchmark: str, method: str):
    values = resolved(benchmark, method)
    wrong = {}
    for key, entry in recipe(benchmark, method).items():
        assert key in values, f"{benchmark}/{method}: {key} is not a setting of this run"
        expected = None if entry.get("none") else entry["value"]
        if not _same(values[key], expected):
            wrong[key] = (values[key], expected)
    assert not wrong, f"{benchmark}/{method}: config differs from docs/methods.md (got, table): {wrong}"


@pytest.mark.parametrize(("benchmark", "method"), CONFIGS)
def test_config_states_exactly_the_table(benchmark: str, method: str):
    cfg = load_config(benchmark, method)
    stated = {f"{s}.{k}" for s, sec in cfg.items() for k in sec}
    table = {k for k, e in recipe(benchmark, method).items() if not e.get("none")}
    assert stated == table, f"only in the config: {sorted(stated - table)}; only in the table: {sorted(table - stated)}"


def _required(benchmark: str, method: str) -> set[str]:
    """The settings a run of this method trains with, which the table must name."""
    cls = get_strategy_class(method).config_cls
    cfg = resolved(benchmark, method)
    need = {"benchmark.n_experiences", "benchmark.seed", "benchmark.class_order", "benchmark.pipeline",
            "benchmark.normalize", "benchmark.img_size", "strategy.backbone", "strategy.pretrained",
            "strategy.train_mb_size", "method.epochs", "method.lr", "method.head_lr_scale", "method.optimizer",
            "method.weight_decay", "method.lr_schedule", "method.clip_grad"}
    schedule = cfg["method.lr_schedule"]
    if schedule == "step":
        need |= {"method.lr_step_epochs", "method.lr_step_gamma"}
    if schedule in ("cosine", "cosine_iter", "cosine_timm"):
        need.add("method.lr_min")
    if schedule == "cosine_iter":
        need.add("method.lr_freeze_iters")
    if "method.layers" in cfg:
        need.add("method.layers")
    if "method.length" in cfg and method != "smope":
        need.add("method.length")
    if benchmark == "imagenet_r":
        need.add("benchmark.split" if cfg["benchmark.split"] == "smope" else "benchmark.split_seed")
    if method == "smope":  # issue #17: the paper configs state the recipe and its official values
        need |= {"method.recipe", "method.tap_first_lr"}
        if schedule == "cosine_iter":
            need.add("method.lr_iter_step")
    if issubclass(cls, HiDeConfig):
        phases = cfg["method.phases"]
        need.add("method.phases")
        if "tii" in phases:
            need |= {f"method.{k}" for k in ("tii_epochs", "tii_lr", "tii_input", "tii_clip_grad", "tii_replay_epochs",
                                             "tii_replay_lr", "tii_replay_batch_ratio", "n_centroids")}
        if "tap" in phases:
            need |= {f"method.{k}" for k in ("tap_epochs", "tap_lr", "tap_optimizer", "tap_lr_schedule",
                                             "tap_batch_ratio", "replay_sampling", "replay_weight_decay",
                                             "tap_centroids")}
    return need


@pytest.mark.parametrize(("benchmark", "method"), CONFIGS)
def test_table_names_every_training_setting(benchmark: str, method: str):
    missing = _required(benchmark, method) - set(recipe(benchmark, method))
    assert not missing, f"{benchmark}/{method}: the recipe table does not state {sorted(missing)}"


def test_recipe_facts_of_issue_12():
    """The points issue #12 found wrong, read from the configs themselves."""
    for b in SPECS:
        for m in ("hide", "hash"):
            r = resolved(b, m)
            assert r["benchmark.class_order"] == "natural" and r["benchmark.seed"] == 42
            assert r["method.tii_input"] == "augmented" and r["method.replay_sampling"] == "official"
            assert r["method.clip_grad"] == 1.0 and r["method.replay_weight_decay"] == 0.0
            imr = "cosine_timm" if m == "hide" else "cosine"  # timm's lag: only HiDe's official recipe reproduces it
            assert r["method.lr_schedule"] == (imr if b == "imagenet_r" else "step")
            assert r["method.head_lr_scale"] == (1.0 if b == "cub200" else 0.1)
        s = resolved(b, "smope")
        assert (s["benchmark.class_order"], s["benchmark.pipeline"], s["benchmark.normalize"]) == ("python", "smope", "none")
        assert s["method.tap_batch_ratio"] == (6.0 if b == "imagenet_r" else 1.0)


@pytest.mark.parametrize("benchmark", list(SPECS))
def test_smope_paper_configs_build_the_official_recipe(benchmark: str):
    """Issue #17: every SMoPE paper config builds a strategy that runs the official recipe (lagged
    per-iteration cosine over iter_step x epochs, TAP first step at ca_lr, drop_last, fp32)."""
    from conftest import make_tiny_vit

    cfg = apply_overrides(load_config(benchmark, "smope"), [])
    cls = get_strategy_class("smope")
    validate_config(cfg, SPECS[benchmark], cls)
    method = dict(cfg["method"])
    s = cls.from_config({"backbone": make_tiny_vit(depth=6), "num_classes": SPECS[benchmark].num_classes,
                         "train_mb_size": cfg["strategy"]["train_mb_size"], "device": "cpu", "loggers": [],
                         "progress": False, "method": method})
    assert s.cfg.recipe == "official" and s.official
    assert s.tap_first_lr() == 1e-4
    assert isinstance(s._autocast(), contextlib.nullcontext)  # fp32
    s.dataloader = range(39)  # 5,000 / 128 with drop_last
    opts = s.schedule_options()
    if s.cfg.lr_schedule == "cosine_iter":
        assert opts == {"lag": True, "iters_per_epoch": 40 if benchmark == "cifar100" else 39}
    else:
        assert opts == {}
    if benchmark == "imagenet_r":
        assert cfg["benchmark"]["split"] == "smope"


@pytest.mark.parametrize("benchmark", list(SPECS))
def test_hide_paper_configs_run_the_official_recipe(benchmark: str):
    """Each HiDe paper config builds a strategy in the official recipe: 8 virtual ranks of 24, lrs
    × 24/256 (TAP's unscaled), the official prefix reshape, unmasked fp32 evaluation (issue #17)."""
    import contextlib

    from conftest import make_tiny_vit

    cfg = load_config(benchmark, "hide")
    s = get_strategy_class("hide").from_config(
        {"train_mb_size": cfg["strategy"]["train_mb_size"], "method": cfg["method"]},
        backbone=make_tiny_vit(depth=5), num_classes=20, device="cpu", loggers=[], progress=False,
    )
    c = s.cfg
    assert c.recipe == "official" and {k: getattr(c, k) for k in c.OFFICIAL} == c.OFFICIAL
    assert (s.train_mb_size, c.world_size, s.rank_batch()) == (192, 8, 24)
    assert math.isclose(s.training_config().lr, 0.03 * 24 / 256, rel_tol=1e-12)
    assert math.isclose(s.scaled_lr(c.tii_replay_lr), 0.005 * 24 / 256, rel_tol=1e-12)
    assert math.isclose(s.scaled_lr(c.tii_lr), c.tii_lr * 24 / 256, rel_tol=1e-12) and c.tap_lr == 0.005
    assert s.replay_batch(c.tap_batch_ratio) == 120 and s.replay_batch(c.tii_replay_batch_ratio) == 24
    assert s.model.prefix_layout == "hide_official" and s.eval_mask_classes() is None
    assert isinstance(s._autocast(), contextlib.nullcontext)
