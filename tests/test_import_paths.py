"""The import paths users know (README, docs) still reach the code after the rooms were split."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    ("old", "home", "names"),
    [
        (
            "avalanche_promptmoe.training.checkpoint",
            "avalanche_promptmoe.training.checkpointing.checkpoint",
            ["migrate_checkpoint_file", "load_checkpoint_file", "save_checkpoint_file", "CheckpointError"],
        ),
        (
            "avalanche_promptmoe.training",
            "avalanche_promptmoe.training.checkpointing.checkpoint",
            ["CheckpointError", "load_checkpoint_file", "CHECKPOINT_VERSION"],
        ),
        ("avalanche_promptmoe.logging", "avalanche_promptmoe.logging.mlflow_logger", ["MLflowLogger"]),
        (
            "avalanche_promptmoe.logging.mlflow_logger",
            "avalanche_promptmoe.logging.mlflow_run",
            ["MLflowFallbackWarning"],
        ),
    ],
)
def test_old_import_paths_reach_the_same_objects(old: str, home: str, names: list[str]) -> None:
    before, after = importlib.import_module(old), importlib.import_module(home)
    for name in names:
        assert getattr(before, name) is getattr(after, name), f"{old}.{name} is not {home}.{name}"


def test_strategy_and_logger_are_composed_of_their_rooms() -> None:
    from avalanche_promptmoe.logging.mlflow_api import MLflowApiMixin
    from avalanche_promptmoe.logging.mlflow_logger import MLflowLogger
    from avalanche_promptmoe.logging.mlflow_run import MLflowRunMixin
    from avalanche_promptmoe.training.base_strategy import PromptStrategyBase
    from avalanche_promptmoe.training.bookkeeping import TaskBookkeepingMixin
    from avalanche_promptmoe.training.checkpointing.strategy_checkpoint import CheckpointingMixin
    from avalanche_promptmoe.training.loaders import DistributedLoadersMixin

    assert MLflowLogger.__module__ == "avalanche_promptmoe.logging.mlflow_logger"
    assert {MLflowRunMixin, MLflowApiMixin} <= set(MLflowLogger.__mro__)
    # every public method of the rooms is reachable on the composed class, and not shadowed by it
    for room in (MLflowRunMixin, MLflowApiMixin):
        for name in (n for n in vars(room) if not n.startswith("__")):
            assert getattr(MLflowLogger, name) is getattr(room, name), name
    for room in (CheckpointingMixin, TaskBookkeepingMixin, DistributedLoadersMixin):
        assert room in PromptStrategyBase.__mro__
        for name in (n for n in vars(room) if not n.startswith("__")):
            assert getattr(PromptStrategyBase, name) is getattr(room, name), name
