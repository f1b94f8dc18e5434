"""The nearest-class-mean bound (experiments/ncm_bound.py): class-incremental NCM by hand, and the
script end to end on a small slice of the kit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

from ncm_bound import main, ncm_accuracy_matrix, ncm_report  # noqa: E402


def _two_tasks():
    t = torch.tensor
    train = [
        (t([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), t([0, 0, 1])),  # means: class 0 (2, 0), class 1 (0, 2)
        (t([[0.4, 0.0], [0.6, 0.0], [0.0, -2.0]]), t([2, 2, 3])),  # means: class 2 (0.5, 0), class 3 (0, -2)
    ]
    test = [
        (t([[2.0, 0.0], [0.6, 0.0], [0.0, 2.0]]), t([0, 0, 1])),
        (t([[0.5, 0.0], [0.0, -2.0]]), t([2, 3])),
    ]
    return train, test, [[0, 1], [2, 3]]


def test_old_class_samples_can_be_lost_to_a_new_class_mean():
    train, test, classes = _two_tasks()
    # euclidean: after task 1 the class-0 sample at (0.6, 0) is nearer class 2's mean (0.5, 0)
    acc = ncm_accuracy_matrix(train, test, classes, "euclidean")
    np.testing.assert_allclose(acc, [[1.0, np.nan], [2 / 3, 1.0]])
    # cosine: (0.6, 0), (0.5, 0) and (2, 0) point the same way; the tie goes to the earlier class
    acc = ncm_accuracy_matrix(train, test, classes, "cosine")
    np.testing.assert_allclose(acc, [[1.0, np.nan], [1.0, 0.5]])
    report = ncm_report(train, test, classes, ["euclidean"])["euclidean"]
    assert report["faa"] == pytest.approx((2 / 3 + 1) / 2) and report["ffm"] == pytest.approx(1 / 3)
    assert report["joint_task_averaged"] == pytest.approx(report["faa"])
    assert report["joint_sample_weighted"] == pytest.approx(4 / 5)


def test_errors_name_the_bad_value():
    train, test, classes = _two_tasks()
    with pytest.raises(ValueError, match="distance"):
        ncm_accuracy_matrix(train, test, classes, "manhattan")
    with pytest.raises(ValueError, match="class 7"):
        ncm_accuracy_matrix(train, test, [[0, 7], [2, 3]])


def test_script_on_the_kit(tmp_path):
    out = main(["--train-per-class", "4", "--test-per-class", "2", "--n-experiences", "2",
                "--json", str(tmp_path / "ncm.json")])
    for d in ("cosine", "euclidean"):
        r = out[d]
        acc = np.array(r["accuracy_matrix"], dtype=float)
        assert acc.shape == (2, 2) and np.isnan(acc[0, 1])
        assert r["faa"] == pytest.approx(np.nanmean(acc[1])) == pytest.approx(r["joint_task_averaged"])
        assert r["faa"] > 0.1  # far above chance (1 %) with 4 images a class on the reference ViT
        assert acc[0, 0] >= acc[1, 0]  # more classes to confuse with, never fewer errors
    assert (tmp_path / "ncm.json").stat().st_size > 100
