"""The training set held as two tensors on the training device, served in shuffled batches.

For GPU runs (``trainer.resident_data=true``, on in conf/trainer/gpu.yaml): MNIST's 60000
images take 188 MB in fp32, so the whole set fits on any GPU. Batches are then gathered on
the device from one index tensor per epoch: no DataLoader workers, no per-batch collation on
the host and no host-to-device copy per step (Lightning's ``batch_to_device`` finds the batch
already there). The order of the points is the one of :class:`EpochSeededSampler` for the same
(seed, epoch), so a resident run sees the same batches, in the same order, as the DataLoader
path, and resumes the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def stack_dataset(dataset: Dataset, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x, y) of ``dataset`` as two tensors, in index order, through its own transforms."""
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


class ResidentBatches:
    """An iterable over batches of (x, y) already on their device, one shuffled pass per epoch.

    ``sampler`` (an :class:`~mmru.data.datamodule.EpochSeededSampler`) gives each epoch's
    order through ``permutation()``; Lightning calls its ``set_epoch`` before each epoch (it
    looks for ``.sampler`` on any train loader). The last batch may be short, as with a
    DataLoader without ``drop_last``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.batch_size, self.sampler = x, y, batch_size, sampler

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # one host-to-device copy per epoch: the permutation is drawn on the CPU, as the sampler's
        order = self.sampler.permutation().to(self.x.device)
        for idx in order.split(self.batch_size):
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)
