"""Feature extraction over a dataset (the query pass), with a progress bar."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

__all__ = ["extract_features"]


@torch.no_grad()
def extract_features(
    fn: Callable[[Tensor], Tensor],
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device | str,
    desc: str = "features",
    autocast: bool = False,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Run ``fn`` over ``dataset`` (in order, no shuffling) and return ``(features, labels)`` on CPU.

    ``dataset`` items are ``(x, y, ...)``; pass an Avalanche dataset in eval mode so that its
    transforms are deterministic.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    device = torch.device(device)
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x, y = batch[0].to(device, non_blocking=True), batch[1]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
            f = fn(x)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y).long())
    if not feats:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
