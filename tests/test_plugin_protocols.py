"""Issue 14 item 5: our plugins declare the interface they need (typing.Protocol) and check it when
training starts — a TypeError naming the plugin and the missing members, before any step."""

from __future__ import annotations

import pytest
import torch
from avalanche.training import Naive
from cl_utils import make_benchmark
from torch import nn

from avalanche_promptmoe.routing import ExpertUsage
from avalanche_promptmoe.training.plugins import (
    GradientScalingPlugin,
    PhaseSchedulerPlugin,
    PrototypeLossPlugin,
    RoutingHistoryPlugin,
)
from avalanche_promptmoe.training.protocols import (
    ExpertGradModel,
    PrototypeModel,
    RoutingRecordModel,
    protocol_members,
)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _naive(model, plugin):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                 train_epochs=1, plugins=[plugin], evaluator=None)


@pytest.mark.parametrize("plugin, missing", [
    (GradientScalingPlugin(alpha=0.5), "expert_grad_targets"),
    (RoutingHistoryPlugin(usage=ExpertUsage(1, 1, 4, rule="top_k", k=2)), "last_routing"),
    (PrototypeLossPlugin(weight=1.0), "prefix_keys"),
    (PhaseSchedulerPlugin(phases=("tii", "wtp")), "run_tii_phase"),
])
def test_missing_interface_fails_before_any_step(plugin, missing):
    model = Plain()
    before = model.fc.weight.detach().clone()
    naive = _naive(model, plugin)
    with pytest.raises(TypeError, match=rf"{type(plugin).__name__}.*{missing}"):
        naive.train(make_benchmark(n_exp=2, classes_per_exp=2, per_class=8).train_stream[0])
    assert torch.equal(model.fc.weight, before)  # no training step was taken


def test_phase_scheduler_only_requires_enabled_phases():
    naive = _naive(Plain(), PhaseSchedulerPlugin(phases=("wtp",)))
    naive.train(make_benchmark(n_exp=2, classes_per_exp=2, per_class=8).train_stream[0])  # no TII/TAP: fine


def test_protocols_are_runtime_checkable_and_list_their_members():
    assert protocol_members(ExpertGradModel) == ["expert_grad_targets"]
    assert protocol_members(PrototypeModel) == ["frequent_mask", "prefix_keys", "top_k"]
    assert protocol_members(RoutingRecordModel) == ["last_routing", "layers"]
    assert not isinstance(Plain(), ExpertGradModel)

    class WithTargets(Plain):
        def expert_grad_targets(self):
            return []

    assert isinstance(WithTargets(), ExpertGradModel)


def test_our_models_satisfy_their_plugins_protocols():
    from conftest import make_tiny_vit

    from avalanche_promptmoe.methods.hash.model import HashPromptModel
    from avalanche_promptmoe.methods.smope.model import SMoPEModel

    hash_model = HashPromptModel(make_tiny_vit(), 4, layers=(0, 1), num_experts=4, length=2, top_k=2, delta=0.1)
    assert isinstance(hash_model, ExpertGradModel) and isinstance(hash_model, RoutingRecordModel)
    smope = SMoPEModel(make_tiny_vit(), 4, layers=(0, 1), num_experts=4, top_k=2)
    assert isinstance(smope, PrototypeModel)
