"""Data loaders of :class:`~.base_strategy.PromptStrategyBase` under ``torch.distributed`` (a mixin).

In one process these are Avalanche's own loaders. Under ``torch.distributed`` training is data
parallel (each rank reads a ``DistributedSampler`` shard of the same global batches, whatever the
world size) and evaluation is not sharded (every rank evaluates the whole stream, so every metric
is the global figure).
"""

from __future__ import annotations

from typing import Any

from .distributed import is_distributed, rank, world_size

__all__ = ["DistributedLoadersMixin"]


class DistributedLoadersMixin:
    """``make_train_dataloader`` / ``make_eval_dataloader`` (and the sampler's epoch) of ``PromptStrategyBase``."""

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: bool | None = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """Avalanche's loader in one process; under ``torch.distributed`` each rank reads a
        ``DistributedSampler`` shard with batch ``train_mb_size // world_size`` (same global batch, and
        the same order for any world size: a permutation seeded by seed, experience and epoch)."""
        n = world_size()
        if not is_distributed():
            return super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                                 persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        if self.train_mb_size % n:
            raise ValueError(f"train_mb_size: {self.train_mb_size} is not divisible by the world size {n}")
        sampler = DistributedSampler(self.adapted_dataset, num_replicas=n, rank=rank(), shuffle=shuffle,
                                     seed=self.seed + self.trained_experiences, drop_last=drop_last)
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=self.train_mb_size // n, sampler=sampler,
                                     num_workers=num_workers, pin_memory=self.device.type == "cuda")

    def make_eval_dataloader(self, num_workers: int = 0, shuffle: bool = False, pin_memory: bool | None = None,
                             persistent_workers: bool = False, **kwargs: Any) -> None:
        """Avalanche's loader; under ``torch.distributed`` every rank evaluates the whole stream (no
        sharding), so every metric — ours and Avalanche's stock ones — is the global figure."""
        if not is_distributed():
            return super().make_eval_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                                persistent_workers=persistent_workers, **kwargs)
        from avalanche.benchmarks.utils.data_loader import (
            SingleDatasetDataLoader,
            collate_from_data_or_kwargs,
        )

        args = dict(batch_size=self.eval_mb_size, num_workers=num_workers, shuffle=False,
                    pin_memory=self.device.type == "cuda")
        collate_from_data_or_kwargs(self.adapted_dataset, args)
        self.dataloader = SingleDatasetDataLoader(self.adapted_dataset, distributed_sampling=False, **args)

    def _before_training_epoch(self, **kwargs: Any) -> None:
        sampler = getattr(self.dataloader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.clock.train_exp_epochs)
        super()._before_training_epoch(**kwargs)
