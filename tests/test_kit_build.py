"""The kit as a module: `python -m avalanche_promptmoe.kit build` end to end on a tiny synthetic archive,
the per-image digests, the sha256 verification, the stored bounds and where the main job stands."""

from __future__ import annotations

import io
import json
import logging
import runpy
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from avalanche_promptmoe.kit import (
    KIT_META_NAME,
    KIT_TAR_NAME,
    KIT_WEIGHTS_NAME,
    KitError,
    default_kit_dir,
    kit_bounds,
    load_reference_backbone,
    split_tinyimagenet32,
    verify_kit,
)
from avalanche_promptmoe.kit.__main__ import main as kit_main
from avalanche_promptmoe.kit.build import class_split
from avalanche_promptmoe.kit.digests import compare_digests, digest_summary, image_digests

ROOT = Path(__file__).resolve().parents[1]
WNIDS = ["n00000004", "n00000001", "n00000003", "n00000002"]
TINY_PROTOCOL = {"protocol": {"n_experiences": 2, "seed": 0, "train_per_class": 3, "test_per_class": 2},
                 "seq": {"epochs": 1, "train_mb_size": 4, "eval_mb_size": 8}}
TINY_BUILD = ["--epochs", "1", "--batch", "8", "--timm-kwargs", '{"embed_dim": 16, "depth": 6, "num_heads": 2}',
              "--probe-steps", "5", "--probe-epochs", "1", "--protocol", json.dumps(TINY_PROTOCOL), "--quiet"]


def _jpeg(seed: int, size: int) -> bytes:
    from PIL import Image

    rng = np.random.RandomState(seed)
    base = rng.randint(0, 256, (1, 1, 3))
    pixels = np.clip(base + rng.randint(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _members(size: int, train_n: int = 6, val_n: int = 3) -> dict[str, bytes]:
    """A 4-class Tiny-ImageNet tree (below its root folder) at ``size`` px, with a test/ folder to skip."""
    files = {"wnids.txt": "\n".join(WNIDS).encode(), "words.txt": b"", "test/images/test_0.JPEG": _jpeg(0, size)}
    ann = []
    for c, w in enumerate(WNIDS):
        for k in range(train_n):
            files[f"train/{w}/images/{w}_{k}.JPEG"] = _jpeg(100 * c + k, size)
        files[f"train/{w}/{w}_boxes.txt"] = b""
        for k in range(val_n):
            files[f"val/images/val_{c * val_n + k}.JPEG"] = _jpeg(1000 + 100 * c + k, size)
            ann.append(f"val_{c * val_n + k}.JPEG\t{w}\t0\t0\t1\t1")
    files["val/val_annotations.txt"] = "\n".join(ann).encode()
    return files


def _zip(path: Path, root: str, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"{root}/{name}", data)
    return path


@pytest.fixture(scope="module")
def built_kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kit built from a synthetic 64-px tiny-imagenet-200.zip (the downsampling route)."""
    tmp = tmp_path_factory.mktemp("kit_build")
    src = _zip(tmp / "tiny-imagenet-200.zip", "tiny-imagenet-200", _members(64))
    out = tmp / "kit"
    assert kit_main(["build", "--tiny-imagenet-200", str(src), "--out", str(out), *TINY_BUILD]) == 0
    return out


def test_build_writes_a_kit_the_library_reads(built_kit: Path) -> None:
    meta = json.loads((built_kit / KIT_META_NAME).read_text())
    shipped = {"timm_name", "timm_kwargs", "weights", "weights_dtype", "normalization", "pretraining", "measured",
               "params", "split"}  # kit v1's schema
    assert shipped <= set(meta) and meta["sha256"].keys() == {KIT_TAR_NAME, KIT_WEIGHTS_NAME}
    up, down = meta["split"]["upstream_wnids"], meta["split"]["downstream_wnids"]
    assert (up, down) == class_split(WNIDS) and sorted(up + down) == sorted(WNIDS) and len(up) == 2
    assert {"upstream_val_acc", "downstream_linear_probe_acc", "downstream_ncm_acc"} <= set(meta["measured"])
    assert all(0.0 <= meta["measured"][k] <= 1.0 for k in ("upstream_val_acc", "downstream_ncm_acc"))
    assert meta["pretraining"]["epochs"] == 1 and meta["pretraining"]["lr"] == 1e-3  # the recipe, recorded
    assert verify_kit(built_kit) == meta["sha256"]
    with tarfile.open(built_kit / KIT_TAR_NAME) as tf:  # downsampled 32-px JPEGs under tin/, test/ left out
        names = tf.getnames()
        first = tf.extractfile(f"tin/train/{WNIDS[0]}/images/{WNIDS[0]}_0.JPEG").read()
    assert not any("test" in n for n in names) and all(n.startswith("tin/") for n in names)
    from PIL import Image

    assert Image.open(io.BytesIO(first)).size == (32, 32)
    vit = load_reference_backbone(built_kit)
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 16)  # the head is dropped: pooled features
    bm = split_tinyimagenet32(built_kit, n_experiences=2, cache_dir=built_kit / "cache")
    assert bm.protocol["wnids"] == down and len(bm.train_stream) == 2
    digests = (built_kit / "tinyimagenet32_digests.txt").read_text().splitlines()
    assert len(digests) == 4 * (6 + 3)  # train + val images, one line each
    assert meta["image_digests"]["matches_reference"] is False  # synthetic images are not the shipped ones


def test_build_measures_and_stores_the_bounds(built_kit: Path) -> None:
    bm = split_tinyimagenet32(built_kit, cache_dir=built_kit / "cache", **TINY_PROTOCOL["protocol"])
    bounds = kit_bounds(bm.protocol, built_kit)
    assert bounds is not None and bounds.source.endswith("kit_bounds.json")
    assert set(bounds.as_dict()) == {"seq", "ncm", "joint_probe"}
    assert all(0.0 <= v <= 1.0 for v in bounds.as_dict().values())
    other = split_tinyimagenet32(built_kit, n_experiences=2, seed=1, cache_dir=built_kit / "cache")
    assert kit_bounds(other.protocol, built_kit) is None  # another class order: never measured


def test_main_job_says_where_it_stands(built_kit: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        spec = runpy.run_path(str(ROOT / "experiments" / "run_tinyimagenet32.py"), run_name="not_main")["SPEC"]
        import runner
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    p = TINY_PROTOCOL["protocol"]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with caplog.at_level(logging.INFO, logger="avalanche_promptmoe.experiments"):
        summary = runner.run(spec, [
            "--method", "linear", "--kit", str(built_kit), "--device", "cpu", "--run-dir", str(tmp_path / "run"),
            "--tracking-uri", uri, *[a for k, v in p.items() for a in ("--set", f"benchmark.{k}={v}")],
            "--set", "method.epochs=1"])
    stored = kit_bounds(split_tinyimagenet32(built_kit, cache_dir=built_kit / "cache", **p).protocol, built_kit)
    assert {k: summary["bounds"][k] for k in ("seq", "ncm", "joint_probe")} == stored.as_dict()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["bounds"]["ncm"] == stored.ncm
    line = stored.describe(summary["faa"])
    assert line.startswith(f"FAA {summary['faa']:.3f} (seq ") and " · NCM " in line and line in caplog.text
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("tinyimagenet32").experiment_id])[0]
    assert float(run.data.params["bounds.joint_probe"]) == pytest.approx(stored.joint_probe)


def test_image_digests_see_content_not_container(tmp_path: Path) -> None:
    files = _members(32, train_n=2, val_n=1)
    folder = tmp_path / "tree"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    # the same 32-px pictures from a folder and from a zip: identical digests
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    from avalanche_promptmoe.kit.sources import pack_kit_tar

    tar_a = pack_kit_tar(folder, out_a / KIT_TAR_NAME, progress=False)
    no_wnids = {k: v for k, v in files.items() if k != "wnids.txt"}  # a copy without it: taken from train/
    tar_b = pack_kit_tar(_zip(tmp_path / "copy.zip", "imageet32x32-abc", no_wnids), out_b / KIT_TAR_NAME, progress=False)
    with tarfile.open(tar_b) as tf:
        assert tf.extractfile("tin/wnids.txt").read().decode().split() == sorted(WNIDS)
    sa, sb = digest_summary(image_digests(tar_a, progress=False)), digest_summary(image_digests(tar_b, progress=False))
    assert sa == sb and sa["n_images"] == 4 * 3 and compare_digests(sa, sb) == []
    # one changed image is found, and located to its class
    files[f"train/{WNIDS[2]}/images/{WNIDS[2]}_1.JPEG"] = _jpeg(7, 32)
    tar_c = pack_kit_tar(_zip(tmp_path / "changed.zip", "x", files), tmp_path / "c" / KIT_TAR_NAME, progress=False)
    sc = digest_summary(image_digests(tar_c, progress=False))
    assert compare_digests(sc, sa) == [f"train/{WNIDS[2]}"]
    # a route whose images differ from the reference is refused unless asked for
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(sa))
    rc = kit_main(["build", "--images", str(tmp_path / "changed.zip"), "--out", str(tmp_path / "d"),
                   "--reference-digests", str(ref), "--quiet"])
    assert rc == 2 and not (tmp_path / "d" / KIT_WEIGHTS_NAME).exists()


def test_verify_kit_names_a_tampered_file(built_kit: Path, tmp_path: Path) -> None:
    import shutil

    kit = tmp_path / "kit"
    shutil.copytree(built_kit, kit, ignore=shutil.ignore_patterns("cache"))
    weights = kit / KIT_WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(KitError, match=KIT_WEIGHTS_NAME):
        verify_kit(kit)
    (kit / KIT_TAR_NAME).write_bytes(b"not the archive")
    with pytest.raises(KitError, match="differs"):  # the loader checks the archive its JSON lists
        split_tinyimagenet32(kit, n_experiences=2, cache_dir=tmp_path / "cache")


def test_shipped_kit_bounds_are_the_measured_figures() -> None:
    kit = default_kit_dir()
    if not (kit / KIT_TAR_NAME).is_file():
        pytest.skip(f"offline kit not found at {kit}; see docs/DATA.md")
    verify_kit(kit)  # kit v1's JSON lists no sums: checked against KIT_V1_SHA256
    protocol = {"tar_sha256": "6eb68e73f44a44bba08611717b53f60b4e9609a42e673cdda07ff2e9c102cd39", "normalize": True,
                "n_experiences": 10, "seed": 0, "train_per_class": 100, "test_per_class": 50}
    bounds = kit_bounds(protocol, kit)  # docs/results.md, kit protocol
    assert bounds.as_dict() == {"seq": 0.1618, "ncm": 0.2124, "joint_probe": 0.2244}
    assert bounds.describe(0.1974) == "FAA 0.197 (seq 0.162 · NCM 0.212 · joint probe 0.224)"
    assert kit_bounds({**protocol, "normalize": False}, kit) is None


def test_benchmarks_do_not_import_the_engine() -> None:
    """No module of ``benchmarks/`` imports the engine or the kit (at any depth); the kit's names are
    re-exported lazily, by name, and still import from ``benchmarks``."""
    import ast

    import avalanche_promptmoe.benchmarks as benchmarks

    imported = set()
    for path in Path(benchmarks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((path.name, a.name) for a in node.names)
    assert len(imported) > 10  # the walk saw the builders' imports
    assert [i for i in imported if i[1].startswith(("avalanche_promptmoe.engine", "avalanche_promptmoe.kit"))] == []
    from avalanche_promptmoe.benchmarks import load_reference_backbone, split_tinyimagenet32

    assert (split_tinyimagenet32.__module__, load_reference_backbone.__module__) == (
        "avalanche_promptmoe.kit.benchmark", "avalanche_promptmoe.kit.backbone")
