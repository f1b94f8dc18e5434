"""Errors that name the problem and the fix, raised where the input enters (issue #22, "unclear
errors"): the constructor, ``train``, ``eval``, ``save_checkpoint``, the runner's arguments.
Convertible label / image / backbone dtypes are converted with one warning instead."""

from __future__ import annotations

import copy
import errno
import io
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cl_utils import make_images, tiny_backbone
from torch.utils.data import TensorDataset

from avalanche_promptmoe import SequentialPromptStrategy
from avalanche_promptmoe.engine import BackboneError

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
KW = dict(num_classes=4, device="cpu", loggers=[], progress=False, layers=(0,), train_epochs=1, train_mb_size=8)


def _strategy(backbone=None, **kw):
    return SequentialPromptStrategy(backbone=backbone if backbone is not None else tiny_backbone(), **{**KW, **kw})


def _benchmark(xf=lambda x: x, yf=lambda y: y):
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    def ds(x, y):
        d = TensorDataset(xf(x), yf(y))
        d.targets = y.tolist()
        return as_classification_dataset(d)

    x, y = make_images(4, 8, seed=1)
    xt, yt = make_images(4, 4, seed=2)
    return class_incremental_benchmark({"train": ds(x, y), "test": ds(xt, yt)},
                                       class_order=[0, 1, 2, 3], num_experiences=2)


# --------------------------------------------------------------------------- the backbone (constructor)
def test_a_vit_with_its_classification_head_is_refused_naming_num_classes_0():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                            embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(BackboneError, match=r"classification head.*num_classes=0.*reset_classifier\(0\)"):
        _strategy(vit)


def test_one_vit_object_for_two_strategies_says_pass_a_copy():
    vit = tiny_backbone()
    _strategy(vit)
    with pytest.raises(BackboneError, match=r"already used by another strategy.*copy\.deepcopy"):
        _strategy(vit)
    _strategy(copy.deepcopy(tiny_backbone()))  # a copy is fine


def test_a_float16_backbone_is_cast_to_float32_with_a_warning():
    with pytest.warns(UserWarning, match=r"torch\.float16 cast to torch\.float32"):
        s = _strategy(tiny_backbone().half())
    assert {p.dtype for p in s.model.vit.backbone.parameters()} == {torch.float32}
    s.train(_benchmark().train_stream[0])  # used to fail at the first step: "bias type (c10::Half)"


def test_an_unavailable_device_is_named_with_the_available_ones():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ValueError, match=r"device: 'mps' is not available on this machine.*'cpu'"):
        _strategy(device="mps")
    with pytest.raises(ValueError, match=r"device: 'tpu0' is not a device name"):
        _strategy(device="tpu0")


# --------------------------------------------------------------------------- train / eval entries
def test_train_of_a_benchmark_says_pass_an_experience():
    s = _strategy()
    with pytest.raises(TypeError, match=r"train: got a benchmark; pass one experience at a time"):
        s.train(_benchmark())


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_float_or_int32_labels_are_converted_with_one_warning(dtype):
    s = _strategy()
    bm = _benchmark(yf=lambda y: y.to(dtype))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.train(bm.train_stream[0])
        s.eval(bm.test_stream[:1])
    ours = [w for w in caught if "labels: dtype" in str(w.message)]
    assert len(ours) == 1 and f"{dtype} converted to torch.int64" in str(ours[0].message)
    assert s.trained_experiences == 1


def test_uint8_images_are_refused_naming_the_transform():
    s = _strategy()
    bm = _benchmark(xf=lambda x: (x * 40 + 128).clamp(0, 255).to(torch.uint8))
    with pytest.raises(TypeError, match=r"images: dtype torch\.uint8 .*ToDtype\(torch\.float32, scale=True\)"):
        s.train(bm.train_stream[0])
    assert s.trained_experiences == 0 and s.task_classes == []  # refused before the experience began


def test_evaluation_labels_outside_num_classes_are_refused_like_training_ones():
    from cl_utils import make_benchmark

    s = _strategy()
    s.train(_benchmark().train_stream[0])
    wider = make_benchmark(n_exp=3, classes_per_exp=2, per_class=2, test_per_class=2)  # classes 0..5
    with pytest.raises(ValueError, match=r"eval: experience 2 holds class ids \[4, 5\] outside \[0, 4\)"):
        s.eval(wider.test_stream)


# --------------------------------------------------------------------------- save_checkpoint paths
def test_a_path_component_that_is_a_file_is_named(tmp_path):
    s = _strategy()
    blocker = tmp_path / "ck"
    blocker.write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"save_checkpoint: .*ck' is a regular file, not a folder"):
        s.save_checkpoint(blocker / "x.pt")


def test_a_full_disk_names_the_file_and_no_space_left(tmp_path, monkeypatch):
    from avalanche_promptmoe.training.checkpointing import checkpoint as ck

    real_save = torch.save

    def full(obj, f, *a, **k):
        if not isinstance(f, io.BytesIO):  # the checkpoint file itself, not the in-memory payload
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4160 vs 4096")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", full)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(OSError, match=r"x\.pt.*no space left") as err:
        ck.save_checkpoint_file(tmp_path / "x.pt", {"a": torch.zeros(3)})
    assert err.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_tilde_is_expanded_by_save_checkpoint_and_resume_from(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    s = _strategy()
    s.train(_benchmark().train_stream[0])
    written = s.save_checkpoint("~/ck/x.pt")
    assert written == tmp_path / "ck" / "x.pt" and written.is_file()
    assert not (Path.cwd() / "~").exists()
    assert _strategy().resume_from("~/ck/x.pt") == 1


# --------------------------------------------------------------------------- the runner
def _spec():
    return runpy.run_path(str(EXP / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]


def _runner():
    sys.path.insert(0, str(EXP))
    import runner

    return runner


def test_run_dir_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--run-dir: .*taken' is a regular file, not a folder"):
        _runner().run(_spec(), ["--method", "seq", "--no-mlflow", "--device", "cpu",
                                "--run-dir", str(blocker / "run")])


def test_checkpoint_path_with_the_kit_config_names_kit_reference(tmp_path):
    with pytest.raises(SystemExit, match=r"backbone is 'kit-reference'.*drop --checkpoint-path"):
        _runner().run(_spec(), ["--method", "seq", "--no-mlflow", "--device", "cpu", "--run-dir", str(tmp_path),
                                "--checkpoint-path", str(tmp_path / "w.npz")])


def test_an_unwritable_checkpoint_dir_keeps_the_nan_stop_error(tmp_path):
    """Writing the NaN stop's checkpoint fails (here: a path component is a file; read-only folders
    and full disks alike): the FloatingPointError stays the error, and says what was not written."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = _strategy(lr=1e30, checkpoint_dir=blocker / "ck")
    with pytest.raises(FloatingPointError, match=r"non-finite training loss.*could not be written.*regular file"):
        s.train(_benchmark().train_stream[0])
