"""Packaging matches the code: one Python requirement, every third-party import declared and every
declared dependency used, MLflow an extra that ``.[dev]`` installs, and the core usable without MLflow
(and without quadprog, which only silenced qpsolvers' import warning)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
#: top-level import name -> distribution name (as pyproject spells it)
DIST_OF = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "avalanche": "avalanche-lib",
           "numpy": "numpy", "tqdm": "tqdm", "PIL": "pillow", "mlflow": "mlflow", "matplotlib": "matplotlib", "sqlalchemy": "sqlalchemy",
           "sklearn": "scikit-learn",
           "huggingface_hub": "timm"}  # huggingface_hub: timm's own dependency, imported under try/except


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """{top-level module: files importing it} over ``folder``, stdlib and the package itself left out."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "avalanche_promptmoe":
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_one_python_requirement_and_it_is_the_true_one():
    """README and pyproject say the same minimum, and it is the one the code needs (tomllib: 3.11)."""
    spec = PROJECT["requires-python"]
    assert spec == ">=3.11"
    readme = (ROOT / "README.md").read_text()
    stated = set(re.findall(r"Python ≥ (3\.\d+)", readme))
    assert stated == {"3.11"}, f"README states Python ≥ {sorted(stated)}, pyproject {spec}"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert any("import tomllib" in p.read_text() for p in (ROOT / "experiments").glob("*.py"))


def test_dependencies_match_the_imports():
    core = {_name(r) for r in PROJECT["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in PROJECT["optional-dependencies"].items()}
    imports = _third_party_imports(ROOT / "avalanche_promptmoe")
    undeclared = {m: sorted(f) for m, f in imports.items() if m not in DIST_OF}
    assert not undeclared, f"imports with no declared distribution: {undeclared}"
    used = {DIST_OF[m] for m in imports}
    assert "quadprog" not in core | set().union(*extras.values())
    assert core <= used, f"declared but never imported by the package: {sorted(core - used)}"
    # the core needs neither MLflow nor matplotlib: only logging/ imports them, and they are the extra
    optional = {m for m in imports if DIST_OF[m] in {"mlflow", "matplotlib", "sqlalchemy"}}
    for module in optional:
        assert all(f.startswith("avalanche_promptmoe/logging/") for f in imports[module]), imports[module]
    assert {"mlflow", "matplotlib", "sqlalchemy"} <= extras["mlflow"] and not {"mlflow", "matplotlib", "sqlalchemy"} & core
    assert {DIST_OF[m] for m in imports if m not in optional} <= core
    # README's `pip install -e ".[dev]"` still installs everything the tests and the main job need
    assert "avalanche_promptmoe[mlflow]" in PROJECT["optional-dependencies"]["dev"]
    assert 'pip install -e ".[dev]"' in (ROOT / "README.md").read_text()


_WITHOUT_MLFLOW = r"""
import json, sys
sys.modules["mlflow"] = None  # `import mlflow` now fails as if it were not installed
sys.modules["quadprog"] = None  # nor quadprog (not a dependency): qpsolvers then finds no QP solver
sys.path.insert(0, TESTS)
sys.path.insert(0, EXPERIMENTS)
import runner  # as the scripts do, first
import avalanche_promptmoe
from avalanche_promptmoe import (HashPromptStrategy, SMoPEStrategy, LayerGroupedPromptStrategy,
    HiDePromptStrategy, LinearProbeStrategy, SequentialPromptStrategy, JointPromptStrategy)
import avalanche_promptmoe.benchmarks, avalanche_promptmoe.metrics, avalanche_promptmoe.training.plugins
import avalanche_promptmoe.logging
from cl_utils import make_benchmark, tiny_backbone
import torch
torch.set_num_threads(1)
bm = make_benchmark(n_exp=2, per_class=4, test_per_class=2)
s = SequentialPromptStrategy(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1,
                             device="cpu", progress=False, layers=(0,), length=2)
for i, exp in enumerate(bm.train_stream):
    s.train(exp, eval_streams=[])
    s.eval(bm.test_stream[: i + 1])
out = {"trained": s.trained_experiences}
try:
    from avalanche_promptmoe.logging import MLflowLogger
except ImportError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def test_core_works_without_mlflow_or_quadprog_and_the_logger_says_what_to_install():
    code = _WITHOUT_MLFLOW.replace("TESTS", repr(str(ROOT / "tests"))).replace("EXPERIMENTS", repr(str(ROOT / "experiments")))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trained"] == 2
    assert "needs mlflow" in out["error"] and "avalanche_promptmoe[mlflow]" in out["error"]
    assert "no QP solver found" not in proc.stderr  # qpsolvers' import warning is not shown by the scripts
