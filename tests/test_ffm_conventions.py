"""Final forgetting in the two conventions of the papers' code: SMoPE's signed ``ffm`` (max over the
earlier stages) and HiDe-Prompt's ``ffm_hide`` (max over every stage, the last included, so every
term is >= 0), checked by hand and against transcriptions of the official formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from avalanche_promptmoe.metrics import final_forgetting, final_forgetting_hide, summarize

NAN = float("nan")


def _official_layout(acc: np.ndarray) -> np.ndarray:
    """Both official codes keep ``M[task, stage]`` (our matrix transposed), 0 where not evaluated."""
    T = acc.shape[0]
    m = np.zeros((T, T))
    for t in range(T):
        for i in range(t + 1):
            m[i, t] = acc[t, i]
    return m


def _hide_reference(acc: np.ndarray) -> float:
    """HiDe-Prompt engine.py ``evaluate_till_now`` at the last stage: max over all stages (axis 1)."""
    m, last = _official_layout(acc), acc.shape[0] - 1
    return float(np.mean((np.max(m, axis=1) - m[:, last])[:last])) if last else 0.0


def _smope_reference(acc: np.ndarray) -> float:
    """SMoPE trainer.py ``Trainer.summarize_fr`` at the last stage: max over the stages before it."""
    m, last = _official_layout(acc), acc.shape[0] - 1
    return float(np.mean((np.max(m[:, :last], axis=1) - m[:, last])[:last])) if last else 0.0


def test_the_conventions_differ_when_a_task_improves_at_the_last_stage() -> None:
    acc = np.array(
        [
            [0.5, NAN, NAN],
            [0.4, 0.6, NAN],
            [0.7, 0.2, 0.8],
        ]
    )
    # SMoPE: task 0: max(0.5, 0.4) - 0.7 = -0.2 (signed); task 1: 0.6 - 0.2 = 0.4; mean 0.1
    assert final_forgetting(acc) == pytest.approx(0.1)
    # HiDe: task 0: max(0.5, 0.4, 0.7) - 0.7 = 0; task 1: max(0.6, 0.2) - 0.2 = 0.4; mean 0.2
    assert final_forgetting_hide(acc) == pytest.approx(0.2)
    assert summarize(acc)["ffm_hide"] == pytest.approx(0.2) and summarize(acc)["ffm"] == pytest.approx(0.1)
    assert final_forgetting_hide([[0.3]]) == 0.0


def test_future_columns_do_not_enter_hide_forgetting() -> None:
    # task 1 scored 0.9 before it was trained (row 0): HiDe's official matrix never holds that entry
    acc = np.array([[0.5, 0.9], [0.3, 0.4]])
    assert final_forgetting_hide(acc) == pytest.approx(0.2)
    assert final_forgetting_hide(torch.tensor(acc)) == pytest.approx(0.2)


@given(data=st.data(), num_trained=st.integers(1, 6))
def test_both_match_the_official_formulas(data: st.DataObject, num_trained: int) -> None:
    values = data.draw(st.lists(st.floats(0.0, 1.0), min_size=num_trained**2, max_size=num_trained**2))
    acc = np.array(values).reshape(num_trained, num_trained)
    assert final_forgetting(acc) == pytest.approx(_smope_reference(acc), abs=1e-12)
    assert final_forgetting_hide(acc) == pytest.approx(_hide_reference(acc), abs=1e-12)
    assert final_forgetting_hide(acc) >= max(0.0, final_forgetting(acc)) - 1e-12


def test_plugin_emits_hide_forgetting() -> None:
    from avalanche_promptmoe.metrics import task_averaged_metrics

    acc = np.array([[0.5, NAN, NAN], [0.4, 0.6, NAN], [0.7, 0.2, 0.8]])
    plugin = task_averaged_metrics()
    plugin.load_state_dict({"version": 1, "matrices": {"test": torch.tensor(acc)}, "training_exp": None})
    assert plugin.result()["ffm_hide"] == pytest.approx(0.2)
    values = {mv.name: mv.value for mv in plugin._metric_values("test", 2, 0)}
    assert values["FFM_HiDe/eval_phase/test_stream"] == pytest.approx(0.2)
    assert values["FFM/eval_phase/test_stream"] == pytest.approx(0.1)
