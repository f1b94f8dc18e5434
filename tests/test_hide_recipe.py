"""The phase functions run the counts, batches, iteration rules, optimisers and schedules of the
recipe table (docs/methods.md "Recipes", issue #12), checked on tiny inputs; the step schedule; TII on
fresh augmented views; class orders and SMoPE's pipeline; progress bars that show the loss."""

from __future__ import annotations

import math
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cl_utils import make_benchmark, make_images, record_optimizers, tiny_backbone

from avalanche_promptmoe import HiDePromptStrategy
from avalanche_promptmoe.benchmarks import split_cifar100
from avalanche_promptmoe.benchmarks.transforms import build_transforms, class_order_for
from avalanche_promptmoe.methods.smope.strategy import SMoPEStrategy
from avalanche_promptmoe.training.phases import ClassGaussians, train_head_on_gaussians
from avalanche_promptmoe.training.schedules import build_lr_scheduler, step_factor

COMMON = dict(num_classes=6, train_epochs=1, device="cpu", loggers=[], progress=False)
HIDE = dict(layers=(0, 1), length=2, lr=0.01, n_centroids=2, tap_centroids=2)
SMOPE = dict(layers=(0, 1), num_experts=6, top_k=2, lr=0.03, head_lr_scale=1.0, tap_epochs=2)


def _spy_phase(strategy, phase: str, module: torch.nn.Module, optimizers: list) -> list[list[tuple[int, float]]]:
    """Per call of ``strategy.<phase>()``: ``(batch size, lr)`` of every forward of ``module`` in it."""
    calls: list[list[tuple[int, float]]] = []
    active = {"on": False}

    def hook(_m, inputs, _out):
        if active["on"]:
            calls[-1].append((inputs[0].shape[0], optimizers[-1].param_groups[0]["lr"]))

    module.register_forward_hook(hook)
    original = getattr(strategy, phase)

    def wrapped():
        calls.append([])
        active["on"] = True
        try:
            original()
        finally:
            active["on"] = False

    setattr(strategy, phase, wrapped)
    return calls


# ---------------------------------------------------------------------------------------- HiDe TAP / TII replay
def test_hide_tap_and_tii_replay_iterate_once_per_previous_class_with_the_stated_batch(monkeypatch):
    sgd = record_optimizers(monkeypatch, "SGD")
    s = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=4, tii_epochs=0, tii_replay_epochs=2,
                           tap_epochs=3, **HIDE, **COMMON)
    assert (s.cfg.replay_sampling, s.cfg.tap_batch_ratio, s.cfg.tii_replay_batch_ratio) == ("official", 5.0, 1.0)
    tap = _spy_phase(s, "run_tap_phase", s.model.head, sgd)
    replay = _spy_phase(s, "run_tii_phase", s.model.tii, sgd)
    for exp in make_benchmark(n_exp=3, classes_per_exp=2, per_class=8).train_stream:
        s.train(exp, eval_streams=[])
    # task 0: no replay; task t: (classes of tasks < t) iterations per epoch
    assert [len(c) for c in tap] == [0, 3 * 2, 3 * 4]
    assert [len(c) for c in replay] == [0, 2 * 2, 2 * 4]
    assert {b for c in tap for b, _ in c} == {5 * 4}  # HiDe TAP: batch_size * 5 per iteration
    assert {b for c in replay for b, _ in c} == {4}  # HiDe TII replay: batch_size
    # SGD(momentum 0.9) at ca_lr, not batch-scaled, weight decay as HiDe's parser applies it (0.0)
    def on(module):
        ids = {id(p) for p in module.parameters()}
        return [o for o in sgd if {id(p) for p in o.param_groups[0]["params"]} <= ids]

    tap_opts, replay_opts = on(s.model.head), on(s.model.tii)
    assert len(tap_opts) == 2 and len(replay_opts) == 2
    assert all(o.param_groups[0]["initial_lr"] == s.cfg.tii_replay_lr for o in replay_opts)
    for o in tap_opts + replay_opts:
        g = o.param_groups[0]
        assert (g["momentum"], g["weight_decay"]) == (0.9, 0.0)
    assert all(o.param_groups[0]["initial_lr"] == 0.005 for o in tap_opts)
    # cosine per epoch over crct_epochs, constant within an epoch
    expected = [0.005 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3) for _ in range(4)]
    assert [lr for _, lr in tap[2]] == pytest.approx(expected)


def test_smope_tap_sizing_adamw_and_per_iteration_cosine(monkeypatch):
    adamw = record_optimizers(monkeypatch, "AdamW")
    s = SMoPEStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=4, tap_batch_ratio=1.5, **SMOPE, **COMMON)
    assert (s.cfg.tap_lr, s.cfg.tap_lr_schedule, s.cfg.tap_lr_min, s.cfg.replay_weight_decay) == (
        1e-5, "cosine_iter", 1e-6, 5e-4)
    tap = _spy_phase(s, "run_tap_phase", s.model.head, adamw)
    for exp in make_benchmark(n_exp=2, classes_per_exp=2, per_class=8).train_stream:
        s.train(exp, eval_streams=[])
    calls = tap[1]
    assert len(calls) == 2 * 2  # crct_epochs x classes of the earlier tasks
    assert {b for b, _ in calls} == {6}  # int(batch_size * ca_batch_size_ratio) = int(4 * 1.5)
    o = adamw[-1]
    assert o.param_groups[0]["weight_decay"] == 5e-4
    n = len(calls)
    expected = [1e-6 + (1e-5 - 1e-6) * (1 + math.cos(math.pi * i / n)) / 2 for i in range(n)]
    assert [lr for _, lr in calls] == pytest.approx(expected)


def test_official_sampling_draws_per_centroid_and_skips_zero_variance_ones():
    stats = ClassGaussians()
    g = torch.Generator().manual_seed(0)
    feats = torch.cat([0.1 * torch.randn(6, 3, generator=g), torch.full((1, 3), 50.0),  # class 0: blob + outlier
                       0.1 * torch.randn(3, 3, generator=g), 0.1 * torch.randn(3, 3, generator=g) + 20])
    labels = torch.tensor([0] * 7 + [1] * 6)
    stats.fit(feats, labels, n_centroids=2, generator=torch.Generator().manual_seed(0))
    live = sum(int(not bool((v <= 1e-4).all())) for c in (0, 1) for v in stats.variances[c])
    x, y = stats.sample_per_centroid([0, 1], 5, torch.Generator().manual_seed(1))
    assert len(y) == 5 * live and live == 3  # class 0's single-point centroid is skipped
    head = torch.nn.Linear(3, 2)
    seen = []
    head.register_forward_hook(lambda _m, i, _o: seen.append(i[0].shape[0]))
    train_head_on_gaussians(head, stats, classes=[0, 1], num_classes=2, epochs=2, lr=0.01, batch_size=5,
                            sampling="official", previous_classes=1, generator=torch.Generator().manual_seed(2))
    assert seen == [5, 5]  # one iteration per previous-task class per epoch, batch = samples per centroid


# ---------------------------------------------------------------------------------------- schedules
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_step_schedule_is_timms_step_as_hides_loop_drives_it():
    from timm.scheduler import StepLRScheduler

    p = torch.nn.Parameter(torch.zeros(1))
    ref_opt, our_opt = torch.optim.Adam([p], lr=0.015), torch.optim.Adam([p], lr=0.015)
    ref = StepLRScheduler(ref_opt, decay_t=30, decay_rate=0.1)
    ours, per_iter = build_lr_scheduler(our_opt, "step", epochs=70, step_epochs=30, step_gamma=0.1)
    assert not per_iter
    ref_lrs, our_lrs = [], []
    for epoch in range(70):
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
        our_lrs.append(our_opt.param_groups[0]["lr"])
        ref.step(epoch)  # H engines/hide_promtp_wtp_and_tap_engine.py: lr_scheduler.step(epoch) after the epoch
        ours.step()
    assert our_lrs == pytest.approx(ref_lrs)
    assert our_lrs[30] == pytest.approx(0.015) and our_lrs[31] == pytest.approx(0.0015)
    assert step_factor(61, interval=30, gamma=0.1) == pytest.approx(0.01)


def test_strategy_trains_each_epoch_at_the_step_schedule_lr():
    from avalanche.core import SupervisedPlugin

    lrs = []

    class Record(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kw):
            lrs.append(strategy.optimizer.param_groups[0]["lr"])

    s = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=8, tii_epochs=0, tii_replay_epochs=0,
                           tap_epochs=0, lr_schedule="step", lr_step_epochs=1, lr_step_gamma=0.5,
                           plugins=[Record()], **{**HIDE, **COMMON, "train_epochs": 4})
    s.train(make_benchmark(n_exp=2, classes_per_exp=3, per_class=8).train_stream[0], eval_streams=[])
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.0025])


# ---------------------------------------------------------------------------------------- TII on augmented views
def _noisy_benchmark():
    """Two experiences whose *training* transform adds fresh noise on every read (eval: identity)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset
    from avalanche.benchmarks.utils.transform_groups import TransformGroups
    from torch.utils.data import TensorDataset

    def ds(seed):
        x, y = make_images(4, 6, seed=seed)
        d = TensorDataset(x, y)
        d.targets = y.tolist()
        groups = TransformGroups({"train": lambda t: t + 0.5 * torch.randn_like(t), "eval": lambda t: t})
        return as_classification_dataset(d, transform_groups=groups), x

    (tr, x), (te, _) = ds(1), ds(2)
    bm = class_incremental_benchmark({"train": tr, "test": te}, class_order=[0, 1, 2, 3], num_experiences=2)
    return bm, x


@pytest.mark.parametrize("tii_input", ["augmented", "cached"])
def test_tii_trains_on_a_fresh_augmented_view_each_epoch(tii_input):
    bm, x = _noisy_benchmark()
    s = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=64, tii_epochs=3, tii_input=tii_input,
                           tii_replay_epochs=0, tap_epochs=0, **{**HIDE, **COMMON, "num_classes": 4})
    sums: list[float] = []
    recording = {"on": False}
    plain = s.model.plain_features

    def spy(inp):
        if recording["on"]:
            sums.append(float(inp.double().sum()))
        return plain(inp)

    s.model.plain_features = spy
    original = s.run_tii_phase

    def phase():
        recording["on"] = True
        original()
        recording["on"] = False

    s.run_tii_phase = phase
    s.train(bm.train_stream[0], eval_streams=[])
    raw = float(x[:12].double().sum())  # the first experience's 12 images, untransformed
    if tii_input == "augmented":
        epochs, stats = sums[:3], sums[3:]
        assert len(sums) == 4  # one batch per epoch (64 > 12), then the statistics pass
        assert len({round(v, 3) for v in epochs}) == 3, "the same view in two epochs"
        assert all(abs(v - raw) > 1e-3 for v in epochs), "TII trained on the eval view"
    else:
        stats = sums
        assert len(sums) == 1  # one cached pass for training and statistics
    assert stats == pytest.approx([raw])  # the statistics read the eval view


# ---------------------------------------------------------------------------------------- class orders, pipelines
def test_class_orders():
    order = list(range(100))
    random.seed(3)
    random.shuffle(order)
    assert class_order_for(100, 3, "python") == order  # SMoPE: random.seed(seed); random.shuffle
    assert class_order_for(200, 42, "natural") == list(range(200))  # HiDe: --shuffle False
    assert class_order_for(10, 0, "numpy") == np.random.RandomState(0).permutation(10).tolist()
    with pytest.raises(ValueError, match="class_order must be one of"):
        class_order_for(10, 0, "torch")


def test_smope_pipeline_transforms():
    from torchvision import transforms as T

    train, evaluation = build_transforms("cifar", img_size=224, normalize="none", pipeline="smope")
    kinds = [type(t) for t in evaluation.transforms]
    assert kinds == [T.Resize, T.ToTensor]  # CIFAR test = Resize(224), no crop, no Normalize
    rrc = train.transforms[0]
    assert isinstance(rrc, T.RandomResizedCrop) and rrc.scale == (0.08, 1.0)
    assert not any(isinstance(t, (T.Normalize, T.ColorJitter)) for t in train.transforms)
    _, cub_eval = build_transforms("cub", img_size=224, normalize="none", pipeline="smope")
    assert [type(t) for t in cub_eval.transforms] == [T.Resize, T.CenterCrop, T.ToTensor]
    assert cub_eval.transforms[0].interpolation == T.InterpolationMode.BILINEAR


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory) -> Path:
    """A 10-class CIFAR-100 lookalike: image of class c has red = 20·c."""
    root = tmp_path_factory.mktemp("cifar_recipe")
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split in ("train", "test"):
        labels = [c for c in range(10) for _ in range(2)]
        data = np.zeros((len(labels), 3, 32, 32), np.uint8)
        data[:, 0] = np.array(labels, np.uint8)[:, None, None] * 20
        entry = {"data": data.reshape(len(labels), -1), "fine_labels": labels,
                 "coarse_labels": [0] * len(labels), "filenames": [f"{i}.png" for i in range(len(labels))]}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"fine_label_names": [f"c{c}" for c in range(10)], "coarse_label_names": ["a"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def test_builder_takes_the_papers_class_order_and_pipeline(cifar10_root):
    bm = split_cifar100(cifar10_root, n_experiences=5, seed=4, normalize="none", img_size=48,
                        class_order="python", pipeline="smope", check_integrity=False)
    order = list(range(10))
    random.Random(4).shuffle(order)
    assert bm.class_order == order and bm.protocol["class_order_rule"] == "python"
    assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == [sorted(order[i:i + 2]) for i in range(0, 10, 2)]
    x, y = bm.test_stream[0].dataset.eval()[0][:2]
    assert x.shape == (3, 48, 48)  # Resize(48) of a 32-px image, no crop
    assert float(x[0].mean()) == pytest.approx(20 * y / 255, abs=1e-6)  # no normalisation
    natural = split_cifar100(cifar10_root, n_experiences=5, seed=42, class_order="natural", check_integrity=False)
    assert natural.class_order == list(range(10))


# ---------------------------------------------------------------------------------------- progress bars
def _frames(err: str, desc: str) -> list[str]:
    return [f for f in re.split(r"[\r\n]", err) if desc in f]


def test_phase_progress_bars_show_the_loss(capsys):
    s = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=8, tii_epochs=2, tii_replay_epochs=2,
                           tap_epochs=2, **{**HIDE, **COMMON, "progress": True})
    for exp in make_benchmark(n_exp=2, classes_per_exp=2, per_class=8).train_stream:
        s.train(exp, eval_streams=[])
    err = capsys.readouterr().err
    for desc in ("TII (task 1)", "TII replay (task 1)", "TAP (task 1)"):
        shown = [f for f in _frames(err, desc) if re.search(r"loss=\d+\.\d{4}", f)]
        assert shown, f"no loss on the {desc!r} bar"
    quiet = HiDePromptStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=8, tii_epochs=1, tii_replay_epochs=1,
                               tap_epochs=1, **{**HIDE, **COMMON})
    for exp in make_benchmark(n_exp=2, classes_per_exp=2, per_class=8).train_stream:
        quiet.train(exp, eval_streams=[])
    assert "loss=" not in capsys.readouterr().err  # progress=False: no bars


def test_smope_dense_warmup_bar_shows_the_loss(capsys):
    s = SMoPEStrategy(backbone=tiny_backbone(), seed=0, train_mb_size=8, **{**SMOPE, **COMMON, "train_epochs": 2,
                                                                          "progress": True, "tap_epochs": 1})
    s.train(make_benchmark(n_exp=2, classes_per_exp=2, per_class=8).train_stream[0], eval_streams=[])
    err = capsys.readouterr().err
    shown = [f for f in _frames(err, "dense warm-up (task 0") if re.search(r"loss=\d+\.\d{4}", f)]
    assert shown and [m for _, m in s.epoch_modes] == ["dense", "sparse", "sparse"]
