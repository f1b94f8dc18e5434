"""``import avalanche_promptmoe`` (and its strategies) prints no warning (issue #22): qpsolvers'
"no QP solver found", raised when Avalanche imports GEM, is silenced, and only that one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code", [
    "import avalanche_promptmoe",
    "from avalanche_promptmoe import HashPromptStrategy, SMoPEStrategy, HiDePromptStrategy, JointPromptStrategy",
])
def test_import_passes_under_warnings_as_errors(code):
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr


_PROBE = """
import warnings, avalanche_promptmoe
ours = [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None and f[1].match("no QP solver found")]
assert ours, "no ignore filter for qpsolvers' warning"
for _action, message, category, module, _line in ours:
    assert category is UserWarning, category
    assert module is not None and module.match("qpsolvers.solvers") and not module.match("mine"), module
    assert not message.match("another warning")
warnings.warn_explicit("no QP solver found on your system", UserWarning, "x.py", 1, module="mine")
"""


def test_the_filter_is_narrow():
    """Only qpsolvers' message from qpsolvers is ignored: the same text from elsewhere still warns
    (in a fresh interpreter: pytest resets the warning filters between tests)."""
    done = subprocess.run([sys.executable, "-W", "error", "-c", _PROBE], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "UserWarning: no QP solver found" in done.stderr, done.stderr[-2000:]
