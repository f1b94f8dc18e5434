"""Checkpoint file format: round trip, atomic writes, error cases, RNG capture / restore."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import avalanche_promptmoe
from avalanche_promptmoe.training.checkpointing.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    capture_rng_state,
    load_checkpoint_file,
    restore_rng_state,
    save_checkpoint_file,
)


def _payload() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # non-empty optimizer state (exp_avg, step, betas tuple in param_groups)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plugins": {"usage": {"counts": torch.arange(5), "frequent": [True, False]}},
        "position": {"next_experience": 2, "name": "split", "ratio": 0.5, "note": None},
        "shape": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "numpy_array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "numpy_scalar": np.float64(0.25),
    }


def test_round_trip(tmp_path: Path) -> None:
    payload = _payload()
    path = save_checkpoint_file(tmp_path / "sub" / "dir" / "run.ckpt", payload)  # parents created
    assert path == tmp_path / "sub" / "dir" / "run.ckpt" and path.is_file()
    loaded = load_checkpoint_file(path)

    assert loaded["format"] == CHECKPOINT_FORMAT
    assert loaded["version"] == CHECKPOINT_VERSION
    assert loaded["library_version"] == avalanche_promptmoe.__version__
    assert isinstance(loaded["model"], OrderedDict)
    for key, tensor in payload["model"].items():
        torch.testing.assert_close(loaded["model"][key], tensor, rtol=0, atol=0)
    assert loaded["optimizer"]["param_groups"] == payload["optimizer"]["param_groups"]
    torch.testing.assert_close(
        loaded["optimizer"]["state"][0]["exp_avg"],
        payload["optimizer"]["state"][0]["exp_avg"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(loaded["plugins"]["usage"]["counts"], torch.arange(5))
    assert loaded["plugins"]["usage"]["frequent"] == [True, False]
    assert loaded["position"] == payload["position"]
    assert loaded["shape"] == torch.Size([2, 3]) and loaded["dtype"] is torch.bfloat16
    # numpy values are converted on save: array -> tensor (same dtype and values), scalar -> float.
    assert isinstance(loaded["numpy_array"], torch.Tensor) and loaded["numpy_array"].dtype == torch.int32
    assert loaded["numpy_array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert type(loaded["numpy_scalar"]) is float and loaded["numpy_scalar"] == 0.25
    # The caller's payload is not modified.
    assert "format" not in payload and isinstance(payload["numpy_array"], np.ndarray)
    # The file really is weights_only-loadable by plain torch.
    assert torch.load(path, weights_only=True)["format"] == CHECKPOINT_FORMAT


def test_tensors_are_mapped_to_the_requested_device(tmp_path: Path) -> None:
    path = save_checkpoint_file(tmp_path / "a.ckpt", {"t": torch.ones(2)})
    assert load_checkpoint_file(path, map_location="meta")["t"].device.type == "meta"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"model": {"w": object()}}, r"payload\['model'\]\['w'\]: value of type builtins.object"),
        ({"a": [1, {"b": {1, 2}}]}, r"payload\['a'\]\[1\]\['b'\]: value of type builtins.set"),
        ({"f": lambda x: x}, r"payload\['f'\]: value of type builtins.function"),
        ({"p": Path("x")}, r"payload\['p'\]: value of type pathlib"),
        ({"o": np.array([1, "a"], dtype=object)}, r"payload\['o'\]: numpy array of dtype object"),
        ({"k": {(1, 2): 3}}, r"payload\['k'\]: dict key \(1, 2\) of type tuple"),
    ],
)
def test_unsupported_values_raise_type_error_naming_the_key_path(tmp_path: Path, payload, message) -> None:
    with pytest.raises(TypeError, match=message):
        save_checkpoint_file(tmp_path / "bad.ckpt", payload)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_reserved_keys_cycles_and_non_dict_payload(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved header keys \\['version'\\]"):
        save_checkpoint_file(tmp_path / "x.ckpt", {"version": 3})
    cyclic: dict = {"a": []}
    cyclic["a"].append(cyclic)
    with pytest.raises(ValueError, match="reference cycle"):
        save_checkpoint_file(tmp_path / "x.ckpt", cyclic)
    with pytest.raises(TypeError, match="payload must be a dict"):
        save_checkpoint_file(tmp_path / "x.ckpt", [1, 2])  # type: ignore[arg-type]
    # Shared (non-cyclic) references are fine.
    shared = torch.ones(2)
    save_checkpoint_file(tmp_path / "x.ckpt", {"a": [shared, shared], "b": {"c": shared}})


def test_failed_write_keeps_old_file_and_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint_file(path, {"generation": 1})
    old_bytes = path.read_bytes()

    def save_then_crash(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half-written checkpoint bytes")
        handle.flush()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_file(path, {"generation": 2})
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert load_checkpoint_file(path)["generation"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]

    save_checkpoint_file(path, {"generation": 2})  # and a later write replaces it
    assert load_checkpoint_file(path)["generation"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint_file(missing)


@pytest.mark.parametrize("content", [b"", b"this is not a torch file at all", "truncated"])
def test_corrupt_file(tmp_path: Path, content) -> None:
    path = tmp_path / "broken.ckpt"
    if content == "truncated":
        save_checkpoint_file(path, {"w": torch.randn(1000)})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"broken\.ckpt is corrupt or not a checkpoint") as info:
        load_checkpoint_file(path)
    assert isinstance(info.value, ValueError)


def test_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is a foreign file"):
        load_checkpoint_file(path)
    torch.save(torch.ones(3), path)  # not even a dict
    with pytest.raises(CheckpointError, match="foreign file"):
        load_checkpoint_file(path)


def test_future_version(tmp_path: Path) -> None:
    path = tmp_path / "future.ckpt"
    torch.save(
        {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1, "library_version": "9.0"}, path
    )
    with pytest.raises(
        CheckpointError, match=rf"version {CHECKPOINT_VERSION + 1} .*version {CHECKPOINT_VERSION}"
    ):
        load_checkpoint_file(path)
    torch.save({"format": CHECKPOINT_FORMAT, "version": "1"}, path)
    with pytest.raises(CheckpointError, match="invalid format version '1'"):
        load_checkpoint_file(path)


def _draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        np.random.randn(),  # uses numpy's cached gaussian on the next call
        torch.rand(3).tolist(),
    )


def test_rng_capture_restore_gives_identical_draws(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0.0, 1.0)  # leave a cached gauss_next in python's state
    np.random.randn()  # and numpy's has_gauss / cached_gaussian
    state = capture_rng_state()
    path = save_checkpoint_file(tmp_path / "rng.ckpt", {"rng": state})  # weights_only-safe as is
    expected = _draws()

    random.seed(100)
    np.random.seed(100)
    torch.manual_seed(100)
    assert _draws() != expected  # the reseeded streams differ (the test can fail)

    restore_rng_state(load_checkpoint_file(path)["rng"])
    assert _draws() == expected
    restore_rng_state(state)  # the in-memory state works too
    assert _draws() == expected


def test_rng_state_types_and_missing_keys() -> None:
    state = capture_rng_state()
    assert state["python"]["state"].dtype == torch.int64 and state["python"]["state"].shape == (625,)
    assert state["numpy"]["keys"].dtype == torch.int64 and state["numpy"]["keys"].shape == (624,)
    assert state["torch"].dtype == torch.uint8
    assert ("torch_cuda" in state) == torch.cuda.is_available()
    with pytest.raises(KeyError, match="numpy"):
        restore_rng_state({"python": state["python"], "torch": state["torch"]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_cuda_states_without_cuda_warn() -> None:
    state = capture_rng_state()
    state["torch_cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    with pytest.warns(UserWarning, match="CUDA is not available"):
        restore_rng_state(state)
