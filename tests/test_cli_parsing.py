"""The experiment CLI refuses malformed input at once: ``--set`` values are TOML (or a bare word / path),
a config file that is not TOML is named with its line, and runs are written under the current directory."""

from __future__ import annotations

import functools
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
sys.path.insert(0, str(EXP))

import runner  # noqa: E402


def _cfg() -> dict:
    return {"benchmark": {}, "strategy": {}, "method": {}}


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("3", 3), ("0.1", 0.1), ("true", True), ("[0, 1]", [0, 1]), ('"a b"', "a b"),
        ("{ depth = 2, embed_dim = 64 }", {"depth": 2, "embed_dim": 64}),
        # bare words and paths stay strings (README: --set benchmark.normalize=none)
        ("none", "none"), ("timm", "timm"), ("vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.augreg_in21k"),
        ("~/weights/vit.npz", "~/weights/vit.npz"), ("/data/ViT-B_16.npz", "/data/ViT-B_16.npz"),
        ("./w.pt", "./w.pt"), ("hf-hub:timm/vit_tiny", "hf-hub:timm/vit_tiny"),
    ],
)
def test_set_values_parse_as_toml_or_bare_words(raw, value):
    cfg = runner.apply_overrides(_cfg(), [f"method.x={raw}"])
    assert cfg["method"]["x"] == value and type(cfg["method"]["x"]) is type(value)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("[0,", r"--set method\.layers=\[0,: not a TOML value \(Invalid value"),
        ("[0, 1", r"method\.layers=\[0, 1: not a TOML value"),
        (".5", r"method\.layers=\.5: not a TOML value"),
        ("1e", r"method\.layers=1e: not a TOML value"),
        ("01", r"method\.layers=01: not a TOML value"),
        ("", r"method\.layers=: not a TOML value"),
        ("a b", r"method\.layers=a b: not a TOML value"),
        ('"open', r"method\.layers=\"open: not a TOML value"),
        ("True", r"method\.layers=True: TOML booleans are lowercase; write method\.layers=true"),
        ("None", r"method\.layers=None: TOML has no null"),
        ("3\nx = 4", r"one value expected"),
    ],
)
def test_malformed_set_values_are_refused_naming_the_key(raw, match):
    with pytest.raises(ValueError, match=match):
        runner.apply_overrides(_cfg(), [f"method.layers={raw}"])


def test_the_issue_case_fails_in_the_cli_not_in_the_model():
    """``--set 'method.layers=[0,'`` used to be kept as the string "[0," and fail later in prefix_vit.py."""
    spec = runpy.run_path(str(EXP / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]
    with pytest.raises(ValueError, match=r"--set method\.layers=\[0,: not a TOML value"):
        runner.run(spec, ["--method", "seq", "--set", "method.layers=[0,", "--no-mlflow", "--device", "cpu"])


def test_spaces_around_the_key_and_value_are_ignored():
    cfg = runner.apply_overrides(_cfg(), ["method.top_k = 3"])
    assert cfg["method"] == {"top_k": 3}


def test_a_bad_toml_config_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[benchmark]\nn_experiences = 2\n\n[method]\nlayers = [0, 1\ntop_k = 2\n')
    with pytest.raises(ValueError, match=r"config .*bad\.toml: not valid TOML: .*\(at line 6, column \d+\)"):
        runner.load_config("tinyimagenet32", "hash", bad)
    flat = tmp_path / "flat.toml"
    flat.write_text("method = 3\n")
    with pytest.raises(ValueError, match=r"flat\.toml: \['method'\] must be tables"):
        runner.load_config("tinyimagenet32", "hash", flat)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[method]\n")
    with pytest.raises(ValueError, match=r"bin\.toml: not "):
        runner.load_config("tinyimagenet32", "hash", binary)


def test_default_run_dir_is_under_the_current_directory(tmp_path, monkeypatch):
    """Without --run-dir, ``runs/`` is created in the working directory, not in the source tree."""
    real = runpy.run_path(str(EXP / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]
    monkeypatch.chdir(tmp_path)
    created = []

    @functools.wraps(real.builder)  # same signature, so the config validates as for the real builder
    def stop_at_the_benchmark(**kwargs):  # the run folder exists by now; nothing is built or trained
        created.extend(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("seed*"))
        raise RuntimeError("stop here")

    spec = runner.BenchmarkSpec(real.name, stop_at_the_benchmark, real.num_classes, real.root_keyword)
    in_source = ROOT / "runs" / "tinyimagenet32" / "seq" / "seed7"
    existed = in_source.exists()
    with pytest.raises(RuntimeError, match="stop here"):
        runner.run(spec, ["--method", "seq", "--seed", "7", "--no-mlflow", "--device", "cpu"])
    assert created == ["runs/tinyimagenet32/seq/seed7"]
    assert in_source.exists() == existed
