"""Direct tests of mechanisms that a mutation run showed only distant tests (or none) would notice
(issue #22 item 8): each fails when its mechanism is removed or weakened.

Mutations each test was checked against: the checkpoint digest check removed; WTP's contrastive
weight ignored; SMoPE's prototype-loss weight ignored (in the plugin, or not passed from the config);
the per-class replay draw taking half the samples; ``tap_lr_min``'s range check removed; Hash routing
every task with the newest task's frequent set; the prefix bias ignored (fused and explicit paths);
``ExpertUsage`` counts overwritten instead of accumulated (in ``record`` or in ``commit``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cl_utils import tiny_backbone
from conftest import make_tiny_vit

CONFORMANCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "conformance"


def _golden(name: str) -> dict:
    path = CONFORMANCE / name
    if not path.exists():  # the kit is part of the repository's CI checkout (DATA.md)
        pytest.fail(f"conformance golden {path} is missing")
    return torch.load(path, weights_only=False)


COMMON = dict(num_classes=6, device="cpu", loggers=[], progress=False, seed=0, layers=(0, 1))


# --------------------------------------------------------------------------- checkpoint digest
def test_a_flipped_byte_inside_tensor_data_is_caught_by_the_digest(tmp_path):
    """Torch does not check the zip CRCs: a byte flipped inside a tensor's raw data loads fine
    unless our digest catches it."""
    from avalanche_promptmoe.training.checkpoint import (
        CheckpointError,
        load_checkpoint_file,
        save_checkpoint_file,
    )

    marker = torch.full((256,), 1234.5678, dtype=torch.float32)
    path = save_checkpoint_file(tmp_path / "c.pt", {"w": marker})
    raw = bytearray(path.read_bytes())
    # the payload bytes sit in the outer pickle as a latin-1 string written as UTF-8 (pickle protocol 2)
    value = marker[:1].numpy().tobytes()  # 2B 52 9A 44
    needle = (value * 8).decode("latin-1").encode("utf-8")
    at = raw.find(needle)
    assert at >= 0, "the tensor's data is stored uncompressed inside the file"
    assert raw[at + 1 + 5 * len(needle) // 8] == 0x52  # element 5's second byte: ASCII in the UTF-8 text
    raw[at + 1 + 5 * len(needle) // 8] ^= 0x01  # still valid text: the archive stays readable
    path.write_bytes(bytes(raw))
    # without the digest check, the file would load with one value changed
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint_file(path)


# --------------------------------------------------------------------------- WTP contrastive weight
@pytest.mark.parametrize("weight", [0.1, 0.5])
def test_wtp_contrastive_weight_scales_the_regulariser_as_the_official_orth_loss(weight):
    """HiDe's ``orth_loss`` with ``reg = 0.1`` on the golden features (no earlier prototypes)."""
    from avalanche_promptmoe import HiDePromptStrategy

    golden = _golden("hide_official.pt")
    s = HiDePromptStrategy(backbone=tiny_backbone(), contrastive_weight=weight, tau=0.8, length=2, **COMMON)
    s.model.last_features = golden["orth_features"].float()
    loss = s.aux_loss()
    assert loss is not None
    assert float(loss) == pytest.approx(golden["orth_task0"]["loss"] * weight / 0.1, rel=1e-5)


# --------------------------------------------------------------------------- SMoPE prototype weight
@pytest.mark.parametrize("weight", [1e-5, 0.25])
def test_smope_proto_weight_scales_the_official_prototype_loss(weight):
    """The strategy's prototype-loss plugin adds ``proto_weight · proto_loss`` (golden: μ_old = 1)."""
    from avalanche_promptmoe import SMoPEStrategy

    golden = _golden("smope_official.pt")
    s = SMoPEStrategy(backbone=tiny_backbone(), proto_weight=weight, num_experts=6, top_k=2, **COMMON)
    plugin = s.prototype_loss
    assert plugin in s.plugins
    plugin.old_keys, plugin.old_frequent = golden["old_pk"].float(), golden["used_frequently"]
    fake = SimpleNamespace(model=SimpleNamespace(prefix_keys=lambda: golden["pk"].float(), top_k=5),
                           loss=torch.tensor(2.0))
    plugin.before_backward(fake)
    assert float(fake.loss) - 2.0 == pytest.approx(weight * golden["proto_loss"], rel=1e-4, abs=1e-9)


# --------------------------------------------------------------------------- per-class replay draw
def test_per_class_replay_draws_samples_per_class_for_every_class():
    from avalanche_promptmoe.training.phases import ClassGaussians, train_head_on_gaussians

    stats = ClassGaussians()
    feats, labels = torch.randn(40, 8), torch.arange(4).repeat_interleave(10)
    stats.fit(feats, labels, n_centroids=2, generator=torch.Generator().manual_seed(0))
    x, y = stats.sample([0, 2, 3], 7, torch.Generator().manual_seed(1))
    assert x.shape == (21, 8) and torch.bincount(y, minlength=4).tolist() == [7, 0, 7, 7]

    head = torch.nn.Linear(8, 4)
    seen: list[int] = []
    head.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    train_head_on_gaussians(head, stats, classes=[0, 1, 2, 3], num_classes=4, epochs=2, lr=0.01,
                            samples_per_class=30, batch_size=16, sampling="per_class",
                            generator=torch.Generator().manual_seed(2))
    assert sum(seen) == 2 * 4 * 30  # every epoch passes over samples_per_class × classes


# --------------------------------------------------------------------------- tap_lr_min range
@pytest.mark.parametrize("tap_lr_min", [-1e-6, 0.01, 0.5])
def test_tap_lr_min_outside_zero_to_tap_lr_is_refused(tap_lr_min):
    from avalanche_promptmoe.training.hide import HiDeConfig

    HiDeConfig(tap_lr=0.01, tap_lr_min=0.0)  # in range
    HiDeConfig(tap_lr=0.01, tap_lr_min=0.005)
    with pytest.raises(ValueError, match="tap_lr_min"):
        HiDeConfig(tap_lr=0.01, tap_lr_min=tap_lr_min)


# --------------------------------------------------------------------------- Hash per-task frequent set
def test_hash_routes_each_task_with_its_own_frequent_set():
    from avalanche_promptmoe.methods.hash.model import HashPromptModel
    from avalanche_promptmoe.routing import top_k_route

    model = HashPromptModel(make_tiny_vit(), 4, layers=(0, 1), num_experts=6, length=2, top_k=2, delta=1e3,
                            generator=torch.Generator().manual_seed(0))
    model.add_task()  # task 0: no frequent experts
    x_attn = torch.randn(1, 17, 64)
    raw0 = model.routers[0](x_attn, 0)
    chosen0 = top_k_route(raw0, 2).indices
    frequent = torch.zeros(2, 6, dtype=torch.bool)
    frequent[0, chosen0.flatten()] = True  # task 1 penalises exactly the 2 experts task 0 picks
    model.add_task(frequent)
    assert torch.equal(model.route(0, x_attn, 0).indices, chosen0)  # task 0: its own (empty) set
    assert torch.equal(model.route(0, x_attn, torch.zeros(1, dtype=torch.long)).indices, chosen0)
    picked1 = model.route(0, x_attn, 1).indices
    assert not frequent[0, picked1].any()  # δ = 1e3 pushes task 1 off its frequent experts


# --------------------------------------------------------------------------- prefix bias (engine)
@pytest.mark.parametrize("path", ["fused", "explicit"])
def test_prefix_bias_enters_the_attention_logits(path):
    from avalanche_promptmoe.engine import PrefixViT

    vit = PrefixViT(make_tiny_vit(), layers=[0, 1])
    x = torch.randn(2, 3, 32, 32)
    keys, values = torch.randn(2, 2, 3, 32), torch.randn(2, 2, 3, 32)

    def run(prefix):
        if path == "fused":
            return vit(x, prefix)
        return vit.forward_explicit(x, prefix)[0]

    with torch.no_grad():
        plain = run(None)
        with_prefix = run({0: (keys, values)})
        zero_bias = run({0: (keys, values, torch.zeros(2, 2, 1, 3))})
        masked_all = run({0: (keys, values, torch.full((2, 2, 1, 3), -1e4))})
        drop_last = torch.tensor([0.0, 0.0, -1e4]).view(1, 1, 1, 3).expand(2, 2, 1, 3)
        masked_one = run({0: (keys, values, drop_last)})
        two_columns = run({0: (keys[:, :, :2], values[:, :, :2])})
    assert not torch.allclose(with_prefix, plain, atol=1e-4)
    torch.testing.assert_close(zero_bias, with_prefix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked_all, plain, atol=1e-5, rtol=1e-5)  # −1e4 on every prefix column
    torch.testing.assert_close(masked_one, two_columns, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- ExpertUsage accumulation
def test_expert_usage_accumulates_records_and_commits():
    from avalanche_promptmoe.routing import ExpertUsage

    usage = ExpertUsage(2, 1, 4, rule="top_k", k=1)
    usage.record(0, torch.tensor([[0, 1], [0, 2]]))
    usage.record(0, torch.tensor([[0, 3]]))  # a second batch adds to the first
    assert usage.pending[0, 0].tolist() == [3, 1, 1, 1]
    usage.commit()
    usage.record(0, torch.tensor([[1, 2]]))
    usage.commit()  # a second task adds to the first
    assert usage.counts[0, 0].tolist() == [3, 2, 2, 1]
    assert usage.counts[1].sum() == 0 and usage.pending.sum() == 0
    assert [s[0, 0].tolist() for s in usage.snapshots] == [[3, 1, 1, 1], [3, 2, 2, 1]]
    assert usage.frequent()[0, 0].tolist() == [True, False, False, False]
