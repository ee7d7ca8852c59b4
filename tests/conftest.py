import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_data_dir(tmp_path, monkeypatch):
    """A data directory holding tiny MNIST, Fashion-MNIST, CIFAR-10 and GTSRB files."""
    from fake_datasets import write_cifar10, write_gtsrb, write_idx_mnist

    write_idx_mnist(tmp_path, "MNIST")
    write_idx_mnist(tmp_path, "FashionMNIST")
    write_cifar10(tmp_path)
    write_gtsrb(tmp_path)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    return tmp_path


@pytest.fixture
def one_thread():
    """Tiny tensors: a second thread only adds synchronisation (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
