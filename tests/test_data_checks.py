"""Datasets checked where it is cheap: corrupt images named (lazily, or all at once with ``verify=True``),
and Avalanche experiences without ``classes_in_this_experience`` (classes from the targets)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_utils import _dataset, make_images, tiny_backbone

from avalanche_promptmoe import (
    HashPromptStrategy,
    HiDePromptStrategy,
    JointPromptStrategy,
    LayerGroupedPromptStrategy,
    LinearProbeStrategy,
    SequentialPromptStrategy,
    SMoPEStrategy,
)
from avalanche_promptmoe.training.experience import experience_classes

# ----------------------------------------------------------------------- experiences without classes


def _from_datasets_benchmark(n_exp: int = 2, per_exp: int = 2):
    """Two experiences built with Avalanche's ``benchmark_from_datasets``: no ``classes_in_this_experience``."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import as_classification_dataset

    n = n_exp * per_exp
    xtr, ytr = make_images(n, 12, seed=1)
    xte, yte = make_images(n, 6, seed=2)

    def part(x, y, e):
        keep = (y // per_exp) == e
        return as_classification_dataset(_dataset(x[keep], y[keep]))

    return benchmark_from_datasets(train=[part(xtr, ytr, e) for e in range(n_exp)],
                                   test=[part(xte, yte, e) for e in range(n_exp)])


def test_experience_classes_from_targets_when_the_attribute_is_absent():
    bm = _from_datasets_benchmark()
    exp = bm.train_stream[1]
    assert not hasattr(exp, "classes_in_this_experience")  # what made the strategies fail
    assert experience_classes(exp) == [2, 3]
    from types import SimpleNamespace

    assert experience_classes(SimpleNamespace(classes_in_this_experience={5, 1})) == [1, 5]
    assert experience_classes(SimpleNamespace(dataset=SimpleNamespace(targets=torch.tensor([3, 3, 0])))) == [0, 3]
    with pytest.raises(TypeError, match="neither classes_in_this_experience nor dataset.targets"):
        experience_classes(SimpleNamespace(current_experience=4, dataset=[1, 2]))


_FAST_PHASES = dict(tap_epochs=1, samples_per_class=8, tap_centroids=2)
_HIDE = dict(layers=(0, 1), length=2, tii_epochs=1, tii_replay_epochs=1, n_centroids=2, **_FAST_PHASES)
STRATEGY_KW = {
    SequentialPromptStrategy: dict(layers=(0, 1), length=2),
    HashPromptStrategy: dict(num_experts=4, top_k=2, **_HIDE),
    HiDePromptStrategy: dict(_HIDE),
    SMoPEStrategy: dict(layers=(0, 1), num_experts=4, top_k=2, **_FAST_PHASES),
    LayerGroupedPromptStrategy: dict(layers=(0, 1), groups=((0,), (1,)), length=2, rank=2, **_FAST_PHASES),
    LinearProbeStrategy: {},
    JointPromptStrategy: dict(layers=(0,), length=2),
}


@pytest.mark.parametrize("cls", list(STRATEGY_KW), ids=lambda c: c.__name__)
def test_strategies_train_on_benchmark_from_datasets(cls):
    kw = STRATEGY_KW[cls]
    s = cls(backbone=tiny_backbone(), num_classes=4, train_mb_size=8, train_epochs=1, device="cpu", loggers=[],
            progress=False, seed=0, lr=0.01, **kw)
    bm = _from_datasets_benchmark()
    for i, exp in enumerate(bm.train_stream):
        s.train(exp, eval_streams=[])
        s.eval(bm.test_stream[: i + 1])
    assert s.task_classes == [[0, 1], [2, 3]]
    assert s.class_to_task == {0: 0, 1: 0, 2: 1, 3: 1}


# ------------------------------------------------------------------------------------- corrupt images

N_CLASSES = 4


def _jpeg(path: Path, value: int, cut: bool = False) -> None:
    """A noisy 40x40 JPEG (noise keeps the scan long); ``cut``: only its first half (a truncated file)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(value)
    arr = np.clip(value * 50 + rng.randint(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, subsampling=0)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2] if cut else data)


def _cub_tree(root: Path, bad: dict[tuple[int, int], str]) -> Path:
    """``root/CUB_200_2011`` in the real layout, 4 classes x 3 images (the 3rd a test image); ``bad`` maps
    (class, k) to ``"cut"`` (truncated JPEG) or ``"text"`` (not an image)."""
    base = root / "CUB_200_2011"
    images, labels, split = [], [], []
    img_id = 0
    for c in range(N_CLASSES):
        for k in range(3):
            img_id += 1
            rel = f"{c + 1:03d}.Bird_{c + 1}/Bird_{c + 1}_{k:04d}.jpg"
            kind = bad.get((c, k))
            if kind == "text":
                (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                (base / "images" / rel).write_text("<html>404 Not Found</html>")
            else:
                _jpeg(base / "images" / rel, c, cut=kind == "cut")
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c + 1}")
            split.append(f"{img_id} {0 if k == 2 else 1}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


INR_WNIDS = ("n01443537", "n01484850", "n01494475", "n01498041")


def _inr_tree(root: Path, bad: dict[tuple[int, int], str]) -> Path:
    """``root/imagenet-r/<wnid>/*.jpg``, 4 classes x 5 images; ``bad`` as in :func:`_cub_tree`."""
    base = root / "imagenet-r"
    for c, wnid in enumerate(INR_WNIDS):
        for k in range(5):
            path = base / wnid / f"art_{k}.jpg"
            if bad.get((c, k)) == "text":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("not an image")
            else:
                _jpeg(path, c, cut=bad.get((c, k)) == "cut")
    return base


def _build(kind: str, root: Path, **kw):
    from avalanche_promptmoe.benchmarks import split_cub200, split_imagenet_r

    builder = split_cub200 if kind == "cub" else split_imagenet_r
    return builder(root, n_experiences=2, seed=None, img_size=32, **kw)


def _bad_path(kind: str, base: Path, c: int, k: int) -> str:
    if kind == "cub":
        return str(base / "images" / f"{c + 1:03d}.Bird_{c + 1}" / f"Bird_{c + 1}_{k:04d}.jpg")
    return str(base / INR_WNIDS[c] / f"art_{k}.jpg")


@pytest.mark.parametrize("kind", ["cub", "inr"])
def test_a_truncated_jpeg_is_named_when_read_also_through_dataloader_workers(kind, tmp_path):
    from avalanche_promptmoe.benchmarks import CorruptImageError

    make = _cub_tree if kind == "cub" else _inr_tree
    base = make(tmp_path, {(3, 0): "cut"})  # a train image of the last class (second experience)
    bad = _bad_path(kind, base, 3, 0)
    bm = _build(kind, tmp_path)  # lazy: building reads no pixels
    first = bm.train_stream[0].dataset.train()
    assert all(first[i][0].shape == (3, 32, 32) for i in range(len(first)))  # the good files load
    stream = "train_stream"
    if kind == "inr":  # ImageNet-R's train/test split is computed: look up where the file went
        from avalanche_promptmoe.benchmarks import imagenet_r_split

        stream = "train_stream" if f"{INR_WNIDS[3]}/art_0.jpg" in imagenet_r_split(tmp_path)[0] else "test_stream"
    second = getattr(bm, stream)[1].dataset.train()
    with pytest.raises(CorruptImageError, match=re.escape(bad) + r": OSError: image file is truncated") as err:
        for i in range(len(second)):
            second[i]
    assert err.value.paths == [bad] and "--verify-data" in str(err.value)
    error = _first_loader_error(torch.utils.data.DataLoader(second, batch_size=4, num_workers=1))
    assert isinstance(error, CorruptImageError) and bad in str(error)  # same type and name across the worker


def _first_loader_error(loader) -> BaseException | None:
    """Iterate ``loader``; its first exception, without the traceback (that would keep the worker alive)."""
    try:
        for _ in loader:
            pass
    except Exception as exc:  # the test asserts its type
        return exc.with_traceback(None)
    return None


@pytest.mark.parametrize("kind", ["cub", "inr"])
def test_verify_lists_every_bad_file_before_training(kind, tmp_path, capsys):
    from avalanche_promptmoe.benchmarks import CorruptImageError

    make = _cub_tree if kind == "cub" else _inr_tree
    base = make(tmp_path, {(0, 1): "cut", (2, 2): "text"})
    bad = sorted([_bad_path(kind, base, 0, 1), _bad_path(kind, base, 2, 2)])
    with pytest.raises(CorruptImageError, match=r"2 of \d+ image files cannot be decoded") as err:
        _build(kind, tmp_path, verify=True)
    assert sorted(err.value.paths) == bad
    for path in bad:
        assert path in str(err.value)
    assert "truncated" in str(err.value) and "cannot identify image file" in str(err.value)
    assert "verifying" in capsys.readouterr().err  # the progress bar
    _build(kind, tmp_path)  # without verify the build is lazy and succeeds


def test_verify_passes_a_good_tree_and_the_runner_flag_reaches_the_builder(tmp_path):
    from avalanche_promptmoe.benchmarks import (
        ImagePathsDataset,
        load_cub200_lists,
        split_cifar100,
        split_cub200,
        verify_image_datasets,
    )

    _cub_tree(tmp_path, {})
    bm = _build("cub", tmp_path, verify=True)
    assert len(bm.train_stream) == 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import runner

    for builder, expected in ((split_cub200, {"verify": True}), (split_cifar100, {"check_integrity": True})):
        spec = runner.BenchmarkSpec("x", builder, 10)
        assert runner.data_check_kwargs(spec, True) == expected and runner.data_check_kwargs(spec, False) == {}
    lists = load_cub200_lists(tmp_path)
    datasets = [ImagePathsDataset(lists["base"] / "images", *lists[s]) for s in ("train", "test")]
    assert verify_image_datasets(datasets, "CUB-200", progress=False) == 12


def test_runner_verify_data_stops_before_training(tmp_path):
    """``run_cub200.py --verify-data`` on a tree with a truncated JPEG: the error lists it, nothing trained."""
    import runpy

    from avalanche_promptmoe.benchmarks import CorruptImageError

    exp = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(exp))
    import runner

    base = _cub_tree(tmp_path / "data", {(1, 2): "cut"})
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[benchmark]\nn_experiences = 2\nimg_size = 32\n\n[strategy]\nbackbone = "vit_tiny_patch16_224"\n'
                   "pretrained = false\n\n[method]\nlayers = [0]\n")
    spec = runpy.run_path(str(exp / "run_cub200.py"), run_name="not_main")["SPEC"]
    argv = ["--method", "seq", "--config", str(cfg), "--data-root", str(tmp_path / "data"), "--no-mlflow",
            "--device", "cpu", "--run-dir", str(tmp_path / "run")]
    with pytest.raises(CorruptImageError, match=re.escape(_bad_path("cub", base, 1, 2))):
        runner.run(spec, [*argv, "--verify-data"])
    assert not (tmp_path / "run" / "last.pt").exists()
