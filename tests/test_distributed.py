"""Data parallelism on CPU: 2 gloo processes give the same accuracy matrix and expert counts as one
process (DECISIONS.md §G): a dataset divisible by world × batch, 200 test samples per experience, and
the same sample order for any world size (a seeded permutation instead of no shuffling: unshuffled
class-sorted batches do not learn)."""

from __future__ import annotations

import json
import socket

import numpy as np
import torch.multiprocessing as mp
from dist_worker import worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    mp.spawn(worker, args=(1, _free_port(), str(one)), nprocs=1, join=True)
    mp.spawn(worker, args=(2, _free_port(), str(two)), nprocs=2, join=True)
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["counts"] == ranks[1]["counts"], "ranks disagree on the summed expert counts"
    assert ranks[0]["counts"] == single["counts"], (ranks[0]["counts"], single["counts"])
    np.testing.assert_allclose(np.array(ranks[0]["matrix"], dtype=float), np.array(single["matrix"], dtype=float),
                               atol=0.01)
    np.testing.assert_array_equal(np.array(ranks[0]["matrix"]), np.array(ranks[1]["matrix"]))
    assert np.nanmean(np.array(single["matrix"], dtype=float)) > 0.3  # the run learned something
