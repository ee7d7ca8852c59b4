"""The paper's four datasets through torchvision, pixels in [0, 1] and no normalisation.

Radii ε_p are measured in pixel space (DESIGN.md), so the only transforms are the resizing
GTSRB needs and CIFAR-10's training augmentation (random crop with 2-pixel padding and
horizontal flip, Sec. 5.1).
"""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch.utils.data import Dataset
from torchvision import transforms as T

from mmru.errors import DatasetUnavailable

#: how to supply the files by hand when they cannot be downloaded
_HOW_TO_SUPPLY = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fmnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/ (the python version of CIFAR-10, unpacked)",
    "gts": "gtsrb/GTSRB/Training/, gtsrb/GTSRB/Final_Test/Images/ and gtsrb/GT-final_test.csv",
}


def build_torchvision_dataset(name: str, root: str | Path, train: bool, download: bool, augment: bool) -> Dataset:
    """Instantiate the torchvision dataset ``name`` in {'mnist', 'fmnist', 'cifar10', 'gts'}."""
    root = str(root)
    to_tensor = T.ToTensor()
    try:
        if name == "mnist":
            return torchvision.datasets.MNIST(root, train=train, transform=to_tensor, download=download)
        if name == "fmnist":
            return torchvision.datasets.FashionMNIST(root, train=train, transform=to_tensor, download=download)
        if name == "cifar10":
            tf = T.Compose([T.RandomCrop(32, padding=2), T.RandomHorizontalFlip(), to_tensor]) if augment else to_tensor
            return torchvision.datasets.CIFAR10(root, train=train, transform=tf, download=download)
        if name == "gts":
            tf = T.Compose([T.Resize((32, 32)), to_tensor])
            return torchvision.datasets.GTSRB(root, split="train" if train else "test", transform=tf, download=download)
    except (RuntimeError, OSError) as err:  # torchvision's "not found" and urllib's network errors
        raise DatasetUnavailable(
            f"Dataset '{name}' was not found in {root} and could not be downloaded ({_first_line(err)}); "
            f"put {_HOW_TO_SUPPLY[name]} under that directory or set paths.data_dir / MMRU_DATA_DIR."
        ) from err
    raise ValueError(f"unknown torchvision dataset {name!r}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
