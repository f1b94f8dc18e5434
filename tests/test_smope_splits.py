"""SMoPE's official ImageNet-R split lists: found locally in the documented order, checked by sha256,
clear errors when missing or altered, and the benchmark built on them (24,000 / 6,000 images with
the official labels). The lists come from ../shared/data (CI has it): a missing copy is a failure."""

from __future__ import annotations

import shutil

import pytest

from avalanche_promptmoe.benchmarks import split_imagenet_r
from avalanche_promptmoe.benchmarks.errors import DatasetNotFoundError
from avalanche_promptmoe.benchmarks.smope_splits import (
    SMOPE_SPLIT_FILES,
    SMOPE_SPLITS_ENV_VAR,
    read_smope_split,
    smope_split_dir,
    smope_split_url,
)
from avalanche_promptmoe.kit import default_kit_dir

SHARED = default_kit_dir() / "smope-imagenet-r-splits"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(SMOPE_SPLITS_ENV_VAR, raising=False)


def test_the_shared_copy_is_found_and_matches_the_recorded_checksums():
    assert (SHARED / "imagenet-r_train.yaml").is_file(), f"{SHARED}: the official lists are missing (CI has them)"
    assert smope_split_dir(SHARED) == SHARED
    train, train_y = read_smope_split(SHARED, "imagenet-r_train.yaml")
    test, test_y = read_smope_split(SHARED, "imagenet-r_test.yaml")
    assert (len(train), len(test)) == (24_000, 6_000) and not set(train) & set(test)
    assert sorted(set(train_y)) == sorted(set(test_y)) == list(range(200))
    assert smope_split_url("imagenet-r_test.yaml").startswith(
        "https://raw.githubusercontent.com/Minhchuyentoancbn/SMoPE/27b982c5d8ff41c345df44e3dd4035b2348548e0/"
    )


def test_search_order_env_var_first_then_shared(tmp_path, monkeypatch):
    copy = tmp_path / "mine"
    shutil.copytree(SHARED, copy)
    monkeypatch.setenv(SMOPE_SPLITS_ENV_VAR, str(copy))
    assert smope_split_dir() == copy
    monkeypatch.setenv(SMOPE_SPLITS_ENV_VAR, str(tmp_path / "empty"))
    assert smope_split_dir() == SHARED.resolve()  # the copy beside the source checkout


def test_altered_list_is_refused_naming_the_file_and_where_to_put_it(tmp_path):
    copy = tmp_path / "lists"
    shutil.copytree(SHARED, copy)
    path = copy / "imagenet-r_test.yaml"
    path.write_text(path.read_text().replace("sketch_3.jpg", "sketch_4.jpg", 1))
    with pytest.raises(DatasetNotFoundError, match=r"imagenet-r_test\.yaml is not SMoPE's official list") as e:
        smope_split_dir(copy)
    assert SMOPE_SPLIT_FILES["imagenet-r_test.yaml"] in str(e.value) and SMOPE_SPLITS_ENV_VAR in str(e.value)


def test_missing_lists_name_every_place_looked_and_the_url(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="split lists not found") as e:
        smope_split_dir(tmp_path)
    assert str(tmp_path) in str(e.value) and "raw.githubusercontent.com" in str(e.value)


def test_benchmark_on_the_official_lists_uses_their_labels(tmp_path, monkeypatch):
    """The builder's ``split="smope"`` branch on a 2-image-per-class subset of the lists (the full
    30,000-file tree is too slow for a unit test): official labels, wnids ordered by label."""
    import avalanche_promptmoe.benchmarks.imagenet_r as inr

    lists = {n: read_smope_split(SHARED, n) for n in SMOPE_SPLIT_FILES}
    label_of: dict[str, int] = {}
    subset: dict[str, list[str]] = {}
    for name, (paths, labels) in lists.items():
        seen: dict[int, int] = {}
        subset[name] = []
        for p, y in zip(paths, labels):
            label_of[p.split("/")[0]] = y
            if seen.get(y, 0) < 2:
                seen[y] = seen.get(y, 0) + 1
                subset[name].append(p)
                (tmp_path / "imagenet-r" / p).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "imagenet-r" / p).touch()
    train, test = subset["imagenet-r_train.yaml"], subset["imagenet-r_test.yaml"]
    monkeypatch.setattr(inr, "_smope_split", lambda root, d: (tmp_path / "imagenet-r", train, test, label_of))
    bm = split_imagenet_r(tmp_path, n_experiences=10, seed=0, class_order="python", pipeline="smope", split="smope")
    assert bm.protocol["split"] == "smope" and "SMoPE's official lists" in bm.protocol["split_rule"]
    assert bm.protocol["wnids"] == sorted(label_of, key=label_of.__getitem__)  # wnids[label] = official class
    got = {int(y) for e in bm.train_stream for y in e.dataset.targets}
    assert got == set(range(200)) and sum(len(e.dataset) for e in bm.train_stream) == len(train) == 400


def test_missing_images_of_the_lists_are_named(tmp_path):
    from avalanche_promptmoe.benchmarks.imagenet_r import _smope_split

    (tmp_path / "imagenet-r" / "n01443537").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="lacks 30000 image"):
        _smope_split(tmp_path, SHARED)
