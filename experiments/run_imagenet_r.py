"""Split ImageNet-R: 10 × 20 classes, a seeded per-class 80/20 split (imagenet-r/ under --data-root).

    python experiments/run_imagenet_r.py --method hash --data-root /data --checkpoint-path vit_b16.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import BenchmarkSpec, run  # noqa: E402

from avalanche_promptmoe.benchmarks import split_imagenet_r  # noqa: E402

SPEC = BenchmarkSpec("imagenet_r", split_imagenet_r, num_classes=200)

if __name__ == "__main__":
    run(SPEC, description=__doc__)
