"""Split CIFAR-100 / CUB-200 / ImageNet-R builders on tiny trees in each dataset's real on-disk layout.

The trees are made here (no download): CIFAR-100's python pickles, ``CUB_200_2011/`` with its text
files, and ``imagenet-r/<wnid>/*.jpg``. Pixel values encode what each test checks (label, split,
left/right half), so the checks go through Avalanche's streams and the real transforms at 32 px.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from avalanche_promptmoe.benchmarks import (
    CIFAR100_URL,
    CUB200_URL,
    IMAGENET_R_URL,
    DatasetNotFoundError,
    build_transforms,
    imagenet_r_split,
    load_cub200_lists,
    split_cifar100,
    split_cub200,
    split_imagenet_r,
)

S = 32  # img_size used by the tests (the eval resize is int(32 / 0.875) = 36)


def _all_samples(stream, eval_mode: bool = True) -> list[tuple[torch.Tensor, int]]:
    out = []
    for exp in stream:
        ds = exp.dataset.eval() if eval_mode else exp.dataset.train()
        out += [(ds[i][0], int(ds[i][1])) for i in range(len(ds))]
    return out


def _rng_snapshot() -> tuple[torch.Tensor, tuple]:
    return torch.get_rng_state().clone(), np.random.get_state()


def _assert_rng_unchanged(before: tuple[torch.Tensor, tuple]) -> None:
    assert torch.equal(torch.get_rng_state(), before[0]), "the global torch RNG was touched"
    after_np = np.random.get_state()
    assert np.array_equal(after_np[1], before[1][1]) and after_np[2] == before[1][2], (
        "global numpy RNG touched"
    )


def _save_jpeg(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=95, subsampling=0)


# ------------------------------------------------------------------------------------------ transforms


def test_transforms_follow_the_protocols() -> None:
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    img = Image.new("RGB", (500, 300), (255, 0, 0))
    for kind in ("cifar", "cub", "imagenet_r"):
        train, ev = build_transforms(kind)
        assert ev(img).shape == (3, 224, 224) and train(img).shape == (3, 224, 224)
        resize = next(t for t in ev.transforms if isinstance(t, T.Resize))
        assert resize.size == 256 and resize.interpolation == InterpolationMode.BICUBIC
        rrc = train.transforms[0]
        assert isinstance(rrc, T.RandomResizedCrop) and rrc.size == (224, 224)
        has_jitter = any(isinstance(t, T.ColorJitter) for t in train.transforms)
        assert has_jitter == (kind == "cifar")
        if kind == "cifar":
            assert rrc.interpolation == InterpolationMode.BICUBIC and rrc.scale == (0.08, 1.0)
            assert next(t for t in train.transforms if isinstance(t, T.ColorJitter)).brightness == (
                pytest.approx(1 - 63 / 255),
                pytest.approx(1 + 63 / 255),
            )
        else:
            assert rrc.scale == (0.05, 1.0) and rrc.ratio == pytest.approx((3 / 4, 4 / 3))
    # defaults: CIFAR normalized with CIFAR stats, CUB / IN-R left in [0, 1]
    red = torch.tensor([1.0, 0.0, 0.0])
    cifar_px = build_transforms("cifar")[1](img)[:, 100, 100]
    mean, std = torch.tensor([0.5071, 0.4867, 0.4408]), torch.tensor([0.2675, 0.2565, 0.2761])
    assert torch.allclose(cifar_px, (red - mean) / std, atol=1e-3)
    assert torch.allclose(build_transforms("cub")[1](img)[:, 100, 100], red, atol=1e-3)
    assert torch.allclose(
        build_transforms("imagenet-r", normalize="timm")[1](img)[:, 0, 0], (red - 0.5) / 0.5
    )
    custom = build_transforms("cub", normalize=((0.0, 0.0, 0.0), (2.0, 2.0, 2.0)))[1](img)
    assert torch.allclose(custom[:, 0, 0], red / 2)
    small_train, small_eval = build_transforms("cub", img_size=S)
    assert next(t for t in small_eval.transforms if isinstance(t, T.Resize)).size == 36
    assert small_eval(img).shape == small_train(img).shape == (3, S, S)
    for bad in (dict(kind="mnist"), dict(kind="cub", img_size=0), dict(kind="cub", normalize="imagenet")):
        with pytest.raises(ValueError):
            build_transforms(**bad)


# -------------------------------------------------------------------------------------------- CIFAR-100

N_CIFAR_CLASSES = 10  # the fake pickles hold 10 classes (the real ones 100)


def _cifar_image(label: int, k: int) -> np.ndarray:
    """Constant image: red = 20 * label, green = 10 * k (index within the class), blue = 77."""
    img = np.zeros((3, 32, 32), np.uint8)
    img[0], img[1], img[2] = 20 * label, 10 * k, 77
    return img.reshape(-1)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/cifar-100-python/{train,test,meta}`` as torchvision reads them (str keys; the real files
    are Python 2 pickles whose keys load as str under ``encoding='latin1'``)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, per_class in (("train", 3), ("test", 2)):
        labels = [c for c in range(N_CIFAR_CLASSES) for _ in range(per_class)]
        ks = [k for _ in range(N_CIFAR_CLASSES) for k in range(per_class)]
        entry = {
            "data": np.stack([_cifar_image(c, k) for c, k in zip(labels, ks)]),
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": f"{split} batch",
        }
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {
        "fine_label_names": [f"class_{c}" for c in range(N_CIFAR_CLASSES)],
        "coarse_label_names": ["a", "b"],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_cifar100_builds_labels_order_and_sizes(cifar_root: Path) -> None:
    before = _rng_snapshot()
    bm = split_cifar100(cifar_root, n_experiences=5, seed=3, img_size=S, check_integrity=False)
    _assert_rng_unchanged(before)
    expected_order = np.random.RandomState(3).permutation(N_CIFAR_CLASSES).tolist()
    assert bm.class_order == expected_order
    assert len(bm.train_stream) == len(bm.test_stream) == 5
    for i, exp in enumerate(bm.train_stream):
        assert set(exp.classes_in_this_experience) == set(expected_order[2 * i : 2 * i + 2])
    assert bm.protocol["n_train"] == 30 and bm.protocol["n_test"] == 20 and bm.protocol["seed"] == 3
    mean, std = torch.tensor([0.5071, 0.4867, 0.4408]), torch.tensor([0.2675, 0.2565, 0.2761])
    samples = _all_samples(bm.test_stream)
    assert len(samples) == 20
    for x, y in samples:
        assert x.shape == (3, S, S) and x.dtype == torch.float32
        raw = x[:, S // 2, S // 2] * std + mean  # default normalize="cifar"
        assert round(float(raw[0]) * 255 / 20) == y
        assert float(raw[2]) * 255 == pytest.approx(77, abs=1)
    x, y = bm.train_stream[0].dataset.train()[0]
    assert x.shape == (3, S, S) and y in expected_order[:2]


def test_cifar100_natural_order_folder_itself_and_pickling(cifar_root: Path) -> None:
    bm = split_cifar100(
        cifar_root / "cifar-100-python",
        n_experiences=2,
        seed=None,
        img_size=S,
        normalize="none",
        check_integrity=False,
    )
    assert bm.class_order == list(range(N_CIFAR_CLASSES))
    assert set(bm.train_stream[0].classes_in_this_experience) == set(range(5))
    ds = bm.test_stream[1].dataset.eval()
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers need this (the no-md5 subclass included)
    assert torch.equal(clone[0][0], ds[0][0]) and clone[0][1] == ds[0][1]
    x, y = ds[0]
    assert y >= 5 and float(x[0, 0, 0]) * 255 == pytest.approx(20 * y, abs=1)


def test_cifar100_errors(cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        split_cifar100(tmp_path / "nowhere")
    msg = str(err.value)
    assert CIFAR100_URL in msg and str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert isinstance(err.value, FileNotFoundError)
    # the fake pickles cannot match torchvision's md5s: the default check rejects them clearly
    with pytest.raises(DatasetNotFoundError, match="md5"):
        split_cifar100(cifar_root, n_experiences=5, img_size=S)
    for bad in (3, 0, 2.0, True):
        with pytest.raises(ValueError, match="n_experiences"):
            split_cifar100(cifar_root, n_experiences=bad, img_size=S, check_integrity=False)


# ---------------------------------------------------------------------------------------------- CUB-200

N_CUB_CLASSES = 20
_CUB_SIZES = [(64, 64), (96, 48), (48, 80)]  # (w, h) of the 3 images of each class


def _cub_image(label: int, is_test: bool, w: int, h: int) -> np.ndarray:
    """Left half red, right half blue; green = 10 * label everywhere; the right half's blue says the split."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = 10 * label
    img[:, : w // 2, 0], img[:, : w // 2, 2] = 220, 20
    img[:, w // 2 :, 0], img[:, w // 2 :, 2] = 20, 220 if is_test else 120
    return img


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/CUB_200_2011/`` with 20 classes x 3 images (the 2nd of each class is a test image),
    image ids deliberately not in class order, and bounding boxes over the left (red) half only."""
    root = tmp_path_factory.mktemp("cub")
    base = root / "CUB_200_2011"
    rows = []
    for c in range(N_CUB_CLASSES):
        for k, (w, h) in enumerate(_CUB_SIZES):
            rows.append((c, k, w, h))
    ids = np.random.RandomState(123).permutation(len(rows)) + 1
    images, labels, split, boxes = [], [], [], []
    for img_id, (c, k, w, h) in sorted(zip(ids.tolist(), rows)):
        rel = f"{c + 1:03d}.Bird_{c + 1}/Bird_{c + 1}_{k:04d}_{img_id}.jpg"
        is_test = k == 1
        _save_jpeg(base / "images" / rel, _cub_image(c, is_test, w, h))
        images.append(f"{img_id} {rel}")
        labels.append(f"{img_id} {c + 1}")
        split.append(f"{img_id} {0 if is_test else 1}")
        boxes.append(f"{img_id} 0.0 0.0 {w // 4}.0 {h}.0")
    for name, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
        ("classes.txt", [f"{c + 1} {c + 1:03d}.Bird_{c + 1}" for c in range(N_CUB_CLASSES)]),
    ):
        (base / name).write_text("\n".join(lines) + "\n")
    return root


def _check_cub_sample(x: torch.Tensor, y: int, is_test: bool) -> None:
    assert x.shape == (3, S, S)
    assert round(float(x[1].mean()) * 255 / 10) == y  # green encodes the label
    left, right = x[:, :, :14].mean(dim=(1, 2)), x[:, :, 18:].mean(dim=(1, 2))
    # full image: both halves survive the resize + centre crop (a bounding-box crop keeps only red)
    assert float(left[0]) > 0.75 and float(left[2]) < 0.2
    assert float(right[0]) < 0.2
    assert float(right[2]) == pytest.approx((220 if is_test else 120) / 255, abs=0.04)


def test_cub200_full_images_labels_and_official_split(cub_root: Path) -> None:
    before = _rng_snapshot()
    bm = split_cub200(cub_root, n_experiences=10, seed=5, img_size=S)
    _assert_rng_unchanged(before)
    order = np.random.RandomState(5).permutation(N_CUB_CLASSES).tolist()
    assert bm.class_order == order
    assert len(bm.train_stream) == 10
    for i, exp in enumerate(bm.test_stream):
        assert set(exp.classes_in_this_experience) == set(order[2 * i : 2 * i + 2])
    test = _all_samples(bm.test_stream)
    train = _all_samples(bm.train_stream)  # with the eval transform, to read the pixels
    assert len(test) == N_CUB_CLASSES and len(train) == 2 * N_CUB_CLASSES
    assert sorted(y for _, y in test) == list(range(N_CUB_CLASSES))
    for x, y in test:
        _check_cub_sample(x, y, is_test=True)
    for x, y in train:
        _check_cub_sample(x, y, is_test=False)
    x, _ = bm.train_stream[0].dataset.train()[0]
    assert x.shape == (3, S, S) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # normalize="none"
    assert bm.protocol["classes"][0] == "001.Bird_1" and bm.protocol["n_test"] == N_CUB_CLASSES


def test_cub200_lists_and_root_forms(cub_root: Path) -> None:
    lists = load_cub200_lists(cub_root / "CUB_200_2011")  # the folder itself is accepted
    train_paths, train_labels = lists["train"]
    test_paths, test_labels = lists["test"]
    assert lists["n_classes"] == N_CUB_CLASSES and len(test_paths) == N_CUB_CLASSES
    assert all("_0001_" in p for p in test_paths) and not any("_0001_" in p for p in train_paths)
    assert all(
        int(p.split(".")[0]) - 1 == y for p, y in zip(train_paths + test_paths, train_labels + test_labels)
    )
    bm = split_cub200(cub_root / "CUB_200_2011", n_experiences=4, seed=None, img_size=S)
    assert bm.class_order == list(range(N_CUB_CLASSES)) and len(bm.test_stream) == 4


def test_cub200_errors(cub_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        split_cub200(tmp_path)
    msg = str(err.value)
    assert CUB200_URL in msg and str(tmp_path / "CUB_200_2011") in msg and "images.txt" in msg
    with pytest.raises(ValueError, match="n_experiences"):
        split_cub200(cub_root, n_experiences=3, img_size=S)
    # an image listed in images.txt but absent on disk
    broken = tmp_path / "CUB_200_2011"
    (broken / "images").mkdir(parents=True)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
        (broken / name).write_text((cub_root / "CUB_200_2011" / name).read_text())
    with pytest.raises(DatasetNotFoundError, match="missing"):
        split_cub200(tmp_path, img_size=S)


# ------------------------------------------------------------------------------------------- ImageNet-R

INR_WNIDS = [f"n{10000000 + 7 * i:08d}" for i in range(10)]
INR_COUNTS = [5, 6, 7, 5, 8, 5, 9, 5, 5, 10]  # images per class (floor(0.8 n) train)
#: sha256 of the canonical split text of the fixture tree with split_seed=0 (locks the split rule;
#: cross-checked with an independent re-implementation of the rule when it was written)
INR_SHA_SEED0 = "2797fc44d7305550938108ba1622353ec92ce413c24723363b0c6c5e36e818b1"


@pytest.fixture(scope="module")
def inr_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/imagenet-r/<wnid>/*.jpg`` (10 classes, 5-10 images, green = 20 * label) plus a README."""
    root = tmp_path_factory.mktemp("inr")
    base = root / "imagenet-r"
    for label, (wnid, n) in enumerate(zip(INR_WNIDS, INR_COUNTS)):
        for k in range(n):
            img = np.full((40 + 4 * k, 40, 3), (90, 20 * label, 30), np.uint8)
            _save_jpeg(base / wnid / f"{['art', 'cartoon', 'sketch'][k % 3]}_{k}.jpg", img)
    (base / "README.txt").write_text("ImageNet-R\n")
    return root


def test_imagenet_r_split_deterministic_disjoint_and_checksummed(inr_root: Path) -> None:
    train, test, sha = imagenet_r_split(inr_root, split_seed=0)
    assert (train, test, sha) == imagenet_r_split(inr_root / "imagenet-r", split_seed=0)
    assert not set(train) & set(test)
    everything = sorted(f"{p.parent.name}/{p.name}" for p in (inr_root / "imagenet-r").glob("n*/*.jpg"))
    assert sorted(train + test) == everything and train == sorted(train) and test == sorted(test)
    for wnid, n in zip(INR_WNIDS, INR_COUNTS):
        assert sum(p.startswith(wnid + "/") for p in train) == n * 4 // 5  # 80 %, rounded down
    canonical = "".join(f"train\t{p}\n" for p in train) + "".join(f"test\t{p}\n" for p in test)
    assert sha == hashlib.sha256(canonical.encode()).hexdigest()
    assert sha == INR_SHA_SEED0
    train1, test1, sha1 = imagenet_r_split(inr_root, split_seed=1)
    assert sha1 != sha and set(test1) != set(test) and len(train1) == len(train)
    with pytest.raises(ValueError, match="split_seed"):
        imagenet_r_split(inr_root, split_seed=-1)


def test_imagenet_r_benchmark(inr_root: Path) -> None:
    before = _rng_snapshot()
    bm = split_imagenet_r(inr_root, n_experiences=5, seed=7, split_seed=0, img_size=S)
    _assert_rng_unchanged(before)
    assert bm.class_order == np.random.RandomState(7).permutation(10).tolist()
    assert bm.protocol["split_sha256"] == INR_SHA_SEED0 and bm.protocol["wnids"] == INR_WNIDS
    n_train = sum(n * 4 // 5 for n in INR_COUNTS)
    assert bm.protocol["n_train"] == n_train and bm.protocol["n_test"] == sum(INR_COUNTS) - n_train
    samples = _all_samples(bm.test_stream)
    assert len(samples) == sum(INR_COUNTS) - n_train
    for x, y in samples:
        assert x.shape == (3, S, S)
        assert round(float(x[1].mean()) * 255 / 20) == y  # label = index of the sorted wnid
    train = _all_samples(bm.train_stream, eval_mode=False)
    assert len(train) == n_train and all(x.shape == (3, S, S) for x, _ in train)
    other = split_imagenet_r(inr_root, n_experiences=10, seed=None, split_seed=3, img_size=S)
    assert other.protocol["split_sha256"] != INR_SHA_SEED0 and other.class_order == list(range(10))


def test_imagenet_r_errors(inr_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        split_imagenet_r(tmp_path / "data")
    msg = str(err.value)
    assert IMAGENET_R_URL in msg and str(tmp_path / "data" / "imagenet-r") in msg
    with pytest.raises(DatasetNotFoundError) as err:
        imagenet_r_split(tmp_path / "data")
    assert IMAGENET_R_URL in str(err.value)
    with pytest.raises(ValueError, match="n_experiences"):
        split_imagenet_r(inr_root, n_experiences=4, img_size=S)
    sparse = tmp_path / "imagenet-r" / "n00000001"
    _save_jpeg(sparse / "only.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetNotFoundError, match="at least 2"):
        imagenet_r_split(tmp_path)
