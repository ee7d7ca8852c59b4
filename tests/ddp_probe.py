"""Helpers that ``train.py`` imports in the DDP test (``tests/`` is on its PYTHONPATH there).

``SequentialDataModule`` trains in dataset order. Lightning would give a DDP training loader a
*shuffling* ``DistributedSampler`` whatever the loader asks for, so under DDP it brings its
own ``DistributedSampler(shuffle=False)`` (which Lightning keeps): rank r gets the indices
r, r + W, r + 2W, ..., so the union of the ranks' i-th local batches is exactly the i-th
sequential batch of a single process whose batch is W times larger. ``RecordSteps`` saves what each step saw and
did, per rank, for the test to compare.
"""

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mmru.data import RobustDataModule


class SequentialDataModule(RobustDataModule):
    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(self.train_set, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)


class RecordSteps(L.Callback):
    """Per training step: the local loss, the weights after the update, and the batch's images."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.losses, self.weights, self.images = [], [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.weights.append(torch.cat([p.detach().flatten().clone() for p in pl_module.net.parameters()]))
        # a per-image fingerprint (pixel sum) identifies which samples this rank's batch held
        self.images.append(batch[0].detach().double().flatten(1).sum(1))

    def on_train_end(self, trainer, pl_module):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {"loss": self.losses, "weights": self.weights, "images": self.images,
                  "world_size": trainer.world_size}
        torch.save(record, self.dirpath / f"steps_rank{trainer.global_rank}.pt")
