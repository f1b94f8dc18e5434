"""Split CIFAR-100: 10 × 10 classes at 224 px (torchvision's python pickles under --data-root).

    python experiments/run_cifar100.py --method hash --data-root /data --checkpoint-path vit_b16.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import BenchmarkSpec, run  # noqa: E402

from avalanche_promptmoe.benchmarks import split_cifar100  # noqa: E402

SPEC = BenchmarkSpec("cifar100", split_cifar100, num_classes=100)

if __name__ == "__main__":
    run(SPEC, description=__doc__)
