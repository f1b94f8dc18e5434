"""The offline kit: decoding, cache, Split Tiny-ImageNet-32 benchmark and the reference ViT (real kit)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avalanche_promptmoe.benchmarks import (
    KIT_V1_SHA256,
    KitError,
    default_kit_dir,
    kit_checksums,
    load_kit_arrays,
    load_reference_backbone,
    reference_transform,
    split_tinyimagenet32,
)
from avalanche_promptmoe.kit import arrays as kit_arrays_module
from avalanche_promptmoe.kit import locate

KIT = default_kit_dir()
needs_kit = pytest.mark.skipif(
    not (KIT / locate.KIT_TAR_NAME).is_file(),
    reason=f"offline kit not found at {KIT} (set AVALANCHE_PROMPTMOE_KIT); see docs/DATA.md",
)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def kit_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder private to this session (tests never rely on a pre-existing cache)."""
    return tmp_path_factory.mktemp("kit_cache")


@pytest.fixture(scope="session")
def kit_arrays(kit_cache: Path) -> dict:
    """The real kit, decoded once per session (~15 s), which also fills ``kit_cache``."""
    if not (KIT / locate.KIT_TAR_NAME).is_file():
        pytest.skip(f"offline kit not found at {KIT} (set AVALANCHE_PROMPTMOE_KIT); see docs/DATA.md")
    return load_kit_arrays(KIT, cache_dir=kit_cache)


def _jpeg(color: tuple[int, int, int], size: int = 32) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _make_mini_kit(folder: Path, shade: int = 0, train_n: int = 3, val_n: int = 2) -> Path:
    """A 3-class kit in the real layout (2 downstream classes), annotations *after* the val images."""
    folder.mkdir(parents=True, exist_ok=True)
    wnids = ["n00000003", "n00000001", "n00000002"]  # downstream = first two, deliberately unsorted
    meta = {"normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}, "weights": "reference_vit.pth"}
    meta["split"] = {"upstream_wnids": wnids[2:], "downstream_wnids": wnids[:2]}
    (folder / locate.KIT_META_NAME).write_text(json.dumps(meta))
    members: list[tuple[str, bytes]] = [("tin/wnids.txt", "\n".join(wnids).encode())]
    for c, w in enumerate(wnids):
        for k in reversed(range(train_n)):  # tar order != sorted order
            members.append((f"tin/train/{w}/images/{w}_{k}.JPEG", _jpeg((10 * k + shade, 40 * c, 7))))
        members.append((f"tin/train/{w}/{w}_boxes.txt", b""))
    ann = []
    for c, w in enumerate(wnids):
        for k in range(val_n):
            name = f"val_{c * val_n + k}.JPEG"
            members.append((f"tin/val/images/{name}", _jpeg((200, 40 * c, 10 * k + shade))))
            ann.append(f"{name}\t{w}\t0\t0\t31\t31")
    members.append(("tin/val/val_annotations.txt", "\n".join(ann).encode()))
    with tarfile.open(folder / locate.KIT_TAR_NAME, "w:xz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return folder


# -------------------------------------------------------------------------------------- real arrays


@needs_kit
def test_kit_arrays_shapes_labels_and_order(kit_arrays: dict) -> None:
    a = kit_arrays
    assert a["x_train"].shape == (50000, 32, 32, 3) and a["x_train"].dtype == np.uint8
    assert a["x_test"].shape == (5000, 32, 32, 3) and a["x_test"].dtype == np.uint8
    assert np.array_equal(np.bincount(a["y_train"]), np.full(100, 500))
    assert np.array_equal(np.bincount(a["y_test"]), np.full(100, 50))
    assert np.all(np.diff(a["y_train"]) >= 0) and np.all(np.diff(a["y_test"]) >= 0)  # classes by label
    meta = json.loads((KIT / locate.KIT_META_NAME).read_text())
    assert a["wnids"] == meta["split"]["downstream_wnids"]
    assert all(
        f.startswith(a["wnids"][y] + "_") for f, y in zip(a["train_files"][::997], a["y_train"][::997])
    )
    first = a["train_files"][a["y_train"] == 0]
    assert list(first) == sorted(first)  # file-name order within a class
    assert a["tar_sha256"] == kit_checksums(KIT)[locate.KIT_TAR_NAME]


@needs_kit
def test_kit_checksums_format() -> None:
    sums = kit_checksums(KIT)
    assert set(sums) == set(KIT_V1_SHA256)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in sums.values())


@needs_kit
def test_cache_hit_is_reused(kit_arrays: dict, kit_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(list(kit_cache.glob("tinyimagenet32-*.npz"))) == 1
    assert not list(kit_cache.glob("*.tmp"))  # atomic write left no temp file

    def no_decode(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(kit_arrays_module, "decode_kit_tar", no_decode)
    again = load_kit_arrays(KIT, cache_dir=kit_cache)
    assert np.array_equal(again["x_train"], kit_arrays["x_train"])
    assert np.array_equal(again["y_test"], kit_arrays["y_test"])


@needs_kit
def test_cache_of_another_archive_is_not_used(
    kit_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_decode(tar_path, wnids):
        calls.append(tar_path)
        z = np.zeros((0,), np.int64)
        return {"x_train": z, "y_train": z, "train_files": z, "x_test": z, "y_test": z, "test_files": z}

    monkeypatch.setattr(kit_arrays_module, "decode_kit_tar", fake_decode)
    # same file name as the real cache but recording another archive's sha256: stale, ignored
    real_cache = next(kit_cache.glob("tinyimagenet32-*.npz"))
    stale_dir = tmp_path / "stale"
    stale_dir.mkdir()
    with np.load(real_cache) as z:
        arrays = {k: z[k][:2] for k in kit_arrays_module._ARRAY_KEYS}
    np.savez(stale_dir / real_cache.name, tar_sha256=np.array("0" * 64), **arrays)
    load_kit_arrays(KIT, cache_dir=stale_dir)
    assert len(calls) == 1
    # a different archive sha256 maps to a different cache file
    monkeypatch.setattr(kit_arrays_module, "sha256_file", lambda path: "f" * 64)
    load_kit_arrays(KIT, cache_dir=kit_cache)
    assert len(calls) == 2


def test_changed_archive_is_decoded_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kit = _make_mini_kit(tmp_path / "kit", shade=0)
    a = load_kit_arrays(kit, cache_dir=cache)
    assert a["x_train"].shape == (6, 32, 32, 3) and a["x_test"].shape == (4, 32, 32, 3)
    assert a["y_train"].tolist() == [0, 0, 0, 1, 1, 1] and a["y_test"].tolist() == [0, 0, 1, 1]
    assert list(a["train_files"][:3]) == ["n00000003_0.JPEG", "n00000003_1.JPEG", "n00000003_2.JPEG"]
    assert np.abs(a["x_train"][2].astype(int) - [20, 0, 7]).max() <= 3  # n00000003_2: (10*2, 0, 7)
    assert len(list(cache.glob("*.npz"))) == 1
    kit = _make_mini_kit(tmp_path / "kit", shade=100)  # same path, new content
    b = load_kit_arrays(kit, cache_dir=cache)
    assert b["tar_sha256"] != a["tar_sha256"]
    assert np.abs(b["x_train"][0].astype(int) - a["x_train"][0]).max() >= 90  # not the stale arrays
    assert len(list(cache.glob("*.npz"))) == 2
    # the tar path itself, and an extracted folder, read the same arrays
    c = load_kit_arrays(kit / locate.KIT_TAR_NAME, cache_dir=cache)
    with tarfile.open(kit / locate.KIT_TAR_NAME) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    shutil.copy(kit / locate.KIT_META_NAME, tmp_path / "extracted")
    d = load_kit_arrays(tmp_path / "extracted", cache_dir=cache)
    for k in kit_arrays_module._ARRAY_KEYS:
        assert np.array_equal(b[k], c[k]) and np.array_equal(b[k], d[k]), k


# ---------------------------------------------------------------------------------------- errors


def test_missing_kit_error_names_path_and_files(tmp_path: Path) -> None:
    missing = tmp_path / "no_kit_here"
    with pytest.raises(KitError) as err:
        load_kit_arrays(missing, cache_dir=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert str(missing) in msg and locate.KIT_TAR_NAME in msg and locate.KIT_META_NAME in msg
    with pytest.raises(KitError, match=str(tmp_path)):
        load_kit_arrays(tmp_path, cache_dir=tmp_path)  # exists, but empty
    with pytest.raises(KitError, match="reference_vit.pth"):
        load_reference_backbone(missing)


def test_default_kit_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(locate.KIT_ENV_VAR, str(tmp_path))
    assert default_kit_dir() == tmp_path
    monkeypatch.delenv(locate.KIT_ENV_VAR)
    root = Path(locate.__file__).resolve().parents[2]
    checkout = root.parent / "shared" / "data"
    if (checkout / locate.KIT_META_NAME).is_file():  # a source checkout with the kit beside it
        assert default_kit_dir() == checkout
    # no kit beside the checkout (an installed wheel): the user cache folder, where `kit build` writes
    monkeypatch.setattr(locate, "_checkout_kit_dir", lambda: tmp_path / "nowhere")
    monkeypatch.setenv(locate.CACHE_ENV_VAR, str(tmp_path / "cache"))
    assert default_kit_dir() == tmp_path / "cache" / "kit"
    with pytest.raises(KitError, match="python -m avalanche_promptmoe.kit build"):
        load_reference_backbone()


@pytest.mark.parametrize("kind", ["bogus", "truncated"])
def test_corrupt_archive_error(tmp_path: Path, kind: str) -> None:
    kit = _make_mini_kit(tmp_path / "kit")
    tar = kit / locate.KIT_TAR_NAME
    data = tar.read_bytes()
    tar.write_bytes(b"this is not an xz archive" * 100 if kind == "bogus" else data[: len(data) // 2])
    with pytest.raises(KitError, match="corrupt") as err:
        load_kit_arrays(kit, cache_dir=tmp_path / "cache")
    assert str(tar) in str(err.value)
    assert not list(tmp_path.rglob("*.npz"))  # nothing cached from a failed decode


# ------------------------------------------------------------------------------------- benchmark


@needs_kit
def test_benchmark_class_split_follows_permutation(kit_arrays: dict, kit_cache: Path) -> None:
    rng_torch = torch.random.get_rng_state()
    rng_np = np.random.get_state()[1].copy()
    bm = split_tinyimagenet32(KIT, n_experiences=10, seed=3, cache_dir=kit_cache)
    assert torch.equal(torch.random.get_rng_state(), rng_torch)  # no global re-seed (ECOSYSTEM §A4.4)
    assert np.array_equal(np.random.get_state()[1], rng_np)
    order = np.random.RandomState(3).permutation(100).tolist()
    assert bm.class_order == order
    assert bm.protocol["seed"] == 3 and bm.protocol["n_experiences"] == 10
    assert bm.protocol["tar_sha256"] == kit_arrays["tar_sha256"]
    assert len(bm.train_stream) == len(bm.test_stream) == 10
    for i, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert set(tr.classes_in_this_experience) == set(order[10 * i : 10 * i + 10])
        assert set(te.classes_in_this_experience) == set(order[10 * i : 10 * i + 10])
        assert len(tr.dataset) == 5000 and len(te.dataset) == 500
    x, y = bm.train_stream[0].dataset[0][:2]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert int(y) in order[:10]
    # normalized with the JSON's mean/std, i.e. (u8 / 255 - 0.5) / 0.5 for kit v1
    idx = np.flatnonzero(kit_arrays["y_train"] == int(y))
    u8 = kit_arrays["x_train"][idx]
    expect = reference_transform(KIT)(torch.from_numpy(u8).permute(0, 3, 1, 2))
    assert any(torch.allclose(x, e, atol=1e-6) for e in expect)


@needs_kit
def test_benchmark_per_class_subsample_and_raw_pixels(kit_arrays: dict, kit_cache: Path) -> None:
    bm = split_tinyimagenet32(
        KIT,
        n_experiences=5,
        seed=0,
        train_per_class=4,
        test_per_class=2,
        normalize=False,
        cache_dir=kit_cache,
    )
    assert [len(e.dataset) for e in bm.train_stream] == [80] * 5
    assert [len(e.dataset) for e in bm.test_stream] == [40] * 5
    exp = bm.train_stream[0]
    xs = torch.stack([exp.dataset[i][0] for i in range(len(exp.dataset))])
    ys = torch.tensor([int(exp.dataset[i][1]) for i in range(len(exp.dataset))])
    assert 0.0 <= xs.min() and xs.max() <= 1.0
    for c in exp.classes_in_this_experience:  # the first 4 images of the class, in file-name order
        expect = kit_arrays["x_train"][kit_arrays["y_train"] == c][:4]
        got = (xs[ys == c] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert sorted(map(bytes, got)) == sorted(map(bytes, expect))


@needs_kit
@pytest.mark.parametrize("n", [3, 7, 0, 101])
def test_invalid_n_experiences(kit_cache: Path, kit_arrays: dict, n: int) -> None:
    with pytest.raises(ValueError, match="n_experiences"):
        split_tinyimagenet32(KIT, n_experiences=n, cache_dir=kit_cache)


@needs_kit
def test_too_many_per_class(kit_cache: Path, kit_arrays: dict) -> None:
    with pytest.raises(ValueError, match="train_per_class"):
        split_tinyimagenet32(KIT, train_per_class=501, cache_dir=kit_cache)
    with pytest.raises(ValueError, match="test_per_class"):
        split_tinyimagenet32(KIT, test_per_class=51, cache_dir=kit_cache)


# ---------------------------------------------------------------------------------------- backbone


@needs_kit
def test_reference_backbone_equals_manual_load(kit_arrays: dict) -> None:
    import timm

    vit = load_reference_backbone(KIT)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in vit.parameters())
    assert not vit.training
    meta = json.loads((KIT / locate.KIT_META_NAME).read_text())
    manual = timm.create_model(meta["timm_name"], pretrained=False, num_classes=0, **meta["timm_kwargs"])
    sd = torch.load(KIT / meta["weights"], map_location="cpu", weights_only=True)
    manual.load_state_dict({k: v.float() for k, v in sd.items() if not k.startswith("head.")})
    manual.eval()
    x = reference_transform(KIT)(torch.from_numpy(kit_arrays["x_test"][::100]).permute(0, 3, 1, 2))
    with torch.no_grad():
        got, want = vit(x), manual(x)
    assert got.shape == (50, meta["timm_kwargs"]["embed_dim"])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
