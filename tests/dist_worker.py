"""Worker for tests/test_distributed.py: a tiny deterministic Hash run in one rank of a gloo group."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_hash(world: int, out: str) -> dict:
    """Train Hash on 2 tiny experiences; return the matrix and expert counts."""
    import torch
    from cl_utils import FAST_HIDE, make_benchmark, tiny_backbone

    from avalanche_promptmoe import HashPromptStrategy

    torch.set_num_threads(1)
    # 32 training samples per experience (divisible by world × batch), 200 test samples per experience
    bm = make_benchmark(n_exp=2, classes_per_exp=2, per_class=16, test_per_class=100, noise=0.4)
    s = HashPromptStrategy(
        backbone=tiny_backbone(), num_classes=4, train_mb_size=16, train_epochs=3, device="cpu", loggers=[],
        progress=False, seed=0, layers=(0, 1), num_experts=4, length=2, top_k=2, lr=0.01, contrastive_weight=0.0,
        **FAST_HIDE,
    )
    for exp in bm.train_stream:
        s.train(exp, eval_streams=[])  # under torch.distributed: a seeded permutation, the same for any world
        s.eval(bm.test_stream)
    metric = next(m for m in s.evaluator.metrics if type(m).__name__ == "TaskAveragedMetrics")
    result = {"matrix": metric.accuracy_matrix.tolist(), "counts": s.routing_history.usage.counts.tolist(),
              "world": world}
    if out:
        Path(out).write_text(json.dumps(result))
    return result


def worker(local_rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
    from avalanche.distributed import DistributedHelper

    DistributedHelper.init_distributed(0, backend="gloo", use_cuda=False)
    run_hash(world, os.path.join(out_dir, f"rank{local_rank}.json"))
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
