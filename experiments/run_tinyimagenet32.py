"""Split Tiny-ImageNet-32 (the offline kit): 100 downstream classes, 10 × 10, the kit's reference ViT.

    python experiments/run_tinyimagenet32.py --method hash
    python experiments/run_tinyimagenet32.py --method smope --set method.top_k=3 --seed 1
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner import BenchmarkSpec, run  # noqa: E402

from avalanche_promptmoe.kit import split_tinyimagenet32  # noqa: E402

SPEC = BenchmarkSpec("tinyimagenet32", split_tinyimagenet32, num_classes=100)

if __name__ == "__main__":
    run(SPEC, description=__doc__)
