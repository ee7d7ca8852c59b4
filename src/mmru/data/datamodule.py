"""One LightningDataModule for every dataset of the paper plus the offline ``mnist5k``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from mmru.data.mnist5k import load_mnist5k
from mmru.data.resident import ResidentBatches, stack_dataset
from mmru.data.torchvision_sets import build_torchvision_dataset

DATASETS = ("mnist", "fmnist", "cifar10", "gts", "mnist5k")


class EpochSeededSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees
    exactly the batches an uninterrupted run sees (RandomSampler draws from the global RNG,
    whose state checkpoints do not hold).
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self) -> torch.Tensor:
        """This epoch's order of the indices, as a CPU tensor."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=g)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.size


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """All labels of a torchvision dataset or a TensorDataset, without loading the images."""
    if hasattr(dataset, "targets"):  # MNIST, Fashion-MNIST, CIFAR-10
        return torch.as_tensor(dataset.targets)
    if hasattr(dataset, "_samples"):  # GTSRB: (path, label) pairs
        return torch.tensor([label for _, label in dataset._samples])
    return torch.as_tensor(dataset.tensors[1])  # mnist5k


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices; validation holds round(fraction * n_c) of each class c.

    Both come out in one seeded random order, so a fixed seed gives a fixed split and
    ``limit_train`` takes a random (not class-sorted) subset.
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        members = order[labels[order] == c]
        held_out[members[: int(round(fraction * len(members)))]] = True
    return order[~held_out[order]].tolist(), order[held_out[order]].tolist()


class RobustDataModule(L.LightningDataModule):
    """Train / validation / test loaders for ``name`` in :data:`DATASETS`.

    ``val_fraction`` of each class of the training set (seeded, stratified) is held out for
    model selection; 0 trains on all of it, as the paper did. ``limit_train``/``limit_test`` take the first
    points only (for smoke runs). ``resident``: the training set is held as tensors on the
    training device and batched there (:mod:`mmru.data.resident`), same batches as the DataLoader.
    """

    def __init__(
        self,
        name: str,
        data_dir: str,
        input_shape: Sequence[int],
        num_classes: int,
        batch_size: int = 128,
        val_fraction: float = 0.0,
        download: bool = True,
        augment: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        limit_train: int | None = None,
        limit_test: int | None = None,
        resident: bool = False,
    ):
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        self.name, self.data_dir = name, data_dir
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.batch_size, self.val_fraction = batch_size, val_fraction
        self.download, self.augment = download, augment
        self.num_workers, self.seed = num_workers, seed
        self.limit_train, self.limit_test = limit_train, limit_test
        self.resident = resident
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def has_validation(self) -> bool:
        return self.val_fraction > 0

    def _load(self, train: bool, augment: bool) -> Dataset:
        if self.name == "mnist5k":
            # The split's own seed is fixed: runs with other seeds must share one test set.
            return load_mnist5k("train" if train else "test")
        return build_torchvision_dataset(self.name, self.data_dir, train, self.download, augment)

    def prepare_data(self) -> None:
        # Downloads once per node before setup() runs in every process (Lightning's contract).
        self._load(train=True, augment=False)
        self._load(train=False, augment=False)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            full = self._load(train=True, augment=self.augment)
            # The validation split must not see augmentation.
            plain = self._load(train=True, augment=False) if self.augment else full
            train_idx, val_idx = stratified_split(dataset_labels(plain), self.val_fraction, self.seed)
            train_idx = train_idx[: self.limit_train] if self.limit_train else train_idx
            self.train_set = Subset(full, train_idx)
            self.val_set = Subset(plain, val_idx) if val_idx else None
        if self.test_set is None and stage in (None, "test", "predict"):
            test = self._load(train=False, augment=False)
            self.test_set = Subset(test, range(min(self.limit_test, len(test)))) if self.limit_test else test

    def check_sample_shape(self) -> None:
        """Fail before training when the data does not match the configured input shape."""
        x, _ = (self.train_set or self.test_set)[0]
        if tuple(x.shape) != self.input_shape:
            raise ValueError(
                f"dataset '{self.name}' yields inputs of shape {tuple(x.shape)}, "
                f"but the config says input_shape={list(self.input_shape)}"
            )

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader | ResidentBatches:
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.resident:
            if distributed or self.augment:
                raise ValueError("resident data serves one process without augmentation")
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            x, y = stack_dataset(self.train_set)
            sampler = EpochSeededSampler(len(x), self.seed)
            return ResidentBatches(x.to(device), y.to(device), self.batch_size, sampler)
        if distributed:  # Lightning swaps in a DistributedSampler, itself seeded per epoch
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)
        return self._loader(self.train_set, EpochSeededSampler(len(self.train_set), self.seed))

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
