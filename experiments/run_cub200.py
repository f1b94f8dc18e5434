"""Split CUB-200: 10 × 20 classes, full images, the official train/test split (CUB_200_2011 under --data-root).

    python experiments/run_cub200.py --method hash --data-root /data --checkpoint-path vit_b16.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import BenchmarkSpec, run  # noqa: E402

from avalanche_promptmoe.benchmarks import split_cub200  # noqa: E402

SPEC = BenchmarkSpec("cub200", split_cub200, num_classes=200)

if __name__ == "__main__":
    run(SPEC, description=__doc__)
