"""SMoPE against its bounds on the CI protocol (ci/README.md): where does its gap to the joint
linear probe and to the training-free NCM bound come from?

Each variant is one SMoPE run on the CI protocol (the kit, 10 × 10 classes, 30 train / 20 test
images per class, batch 32, 2 epochs, TAP 5 epochs × 32 samples per class) with a few settings
changed, or with a diagnostic that a real run cannot use (marked "oracle"):

* ``default`` — the CI settings;
* ``no_tap`` — no head realignment (``tap_epochs = 0``);
* ``tap_x4`` — 4× the TAP samples per class (128 = SMoPE's ``ca_batch_size_ratio`` 4 × batch 32);
* ``tap_lr_x10`` — TAP at 1e-4 instead of 1e-5;
* ``proto_0`` / ``proto_x100`` — prototype loss off / 100× (1e-3);
* ``epochs_4`` — 4 WTP epochs instead of 2;
* ``no_warmup`` — no dense warm-up on the first task;
* ``frozen_prompt`` — the shared prompt trains on the first task only (no drift afterwards: the
  stored statistics of old classes stay exact);
* ``oracle_stats`` — (oracle) before each TAP, the statistics of *every* seen class are recomputed
  with the current prompt from its training images, i.e. TAP without statistics drift.

    python experiments/smope_ablation.py --variants default no_tap oracle_stats --json /tmp/smope.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT / "ci"))

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no_tap": {"tap_epochs": 0},
    "tap_x4": {"samples_per_class": 128},
    "tap_lr_x10": {"tap_lr": 1e-4},
    "proto_0": {"proto_weight": 0.0},
    "proto_x100": {"proto_weight": 1e-3},
    "epochs_4": {"epochs": 4},
    "no_warmup": {"dense_warmup_fraction": 0.0},
    "frozen_prompt": {},
    "oracle_stats": {},
}


def _strategy_class(variant: str, train_stream: Any) -> type:
    """SMoPE, or a diagnostic subclass of it for ``frozen_prompt`` / ``oracle_stats``."""
    import torch

    from avalanche_promptmoe.methods.smope.strategy import SMoPEStrategy
    from avalanche_promptmoe.training.features import extract_features

    if variant == "frozen_prompt":
        class FrozenPromptSMoPE(SMoPEStrategy):
            def prepare_task(self, task_id: int) -> None:
                super().prepare_task(task_id)
                for p in self.model.pool.parameters():
                    p.requires_grad_(task_id == 0)

        return FrozenPromptSMoPE
    if variant == "oracle_stats":
        class OracleStatsSMoPE(SMoPEStrategy):
            @torch.no_grad()
            def run_tap_phase(self) -> None:
                was_training = self.model.training
                self.model.eval()
                for t in range(self.task_id):  # re-measure the old classes with the current prompt
                    feats, labels = extract_features(
                        self.model.forward_features, train_stream[t].dataset.eval(), batch_size=self.eval_mb_size,
                        device=self.device, progress=False,
                    )
                    self.tap_stats.fit(feats, labels, n_centroids=self.cfg.tap_centroids, generator=self.generator)
                self.model.train(was_training)
                with torch.enable_grad():
                    super().run_tap_phase()

        return OracleStatsSMoPE
    return SMoPEStrategy


def run_variant(variant: str, seed: int = 0, kit: str | None = None) -> dict[str, Any]:
    """One SMoPE run on the CI protocol with the variant's settings; the runner's summary."""
    import torch
    from regression import BENCHMARK, METHOD_SETTINGS, STRATEGY
    from runner import train_and_evaluate

    from avalanche_promptmoe.kit import load_reference_backbone, split_tinyimagenet32

    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown {variant!r}; choose from {sorted(VARIANTS)}")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    benchmark = split_tinyimagenet32(kit, **BENCHMARK)
    cls = _strategy_class(variant, benchmark.train_stream)
    settings = {**METHOD_SETTINGS["smope"], **VARIANTS[variant]}
    strategy = cls(backbone=load_reference_backbone(kit), num_classes=100, seed=seed, device="cpu", loggers=[],
                   progress=False, **STRATEGY, **settings)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_and_evaluate(strategy, benchmark, Path(tmp))
    return {"variant": variant, "seed": seed, "settings": VARIANTS[variant], "time_s": time.perf_counter() - t0,
            **{k: summary[k] for k in ("faa", "caa", "ffm", "ffm_hide", "accuracy_matrix")}}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kit", default=None)
    p.add_argument("--json", default=None, help="append each result as one JSON line here")
    args = p.parse_args(argv)
    results = []
    for v in args.variants:
        r = run_variant(v, args.seed, args.kit)
        results.append(r)
        print(f"{v:<14} FAA {100 * r['faa']:6.2f}  CAA {100 * r['caa']:6.2f}  FFM {100 * r['ffm']:6.2f}  "
              f"FFM-HiDe {100 * r['ffm_hide']:6.2f}  ({r['time_s']:.0f} s)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    return results


if __name__ == "__main__":
    main()
