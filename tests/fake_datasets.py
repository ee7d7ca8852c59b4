"""Tiny datasets written in each dataset's real on-disk format, for the real torchvision loaders."""

from __future__ import annotations

import csv
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx_mnist(root: Path, folder: str = "MNIST", n_train: int = 20, n_test: int = 10) -> None:
    """MNIST / Fashion-MNIST: uncompressed idx files in ``<root>/<folder>/raw``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def write_cifar10(root: Path, per_batch: int = 4) -> None:
    """CIFAR-10's python version: pickled batches in ``<root>/cifar-10-batches-py``.

    torchvision also checks the files' md5 sums, which fake files cannot match: tests patch
    ``torchvision.datasets.cifar.check_integrity``.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8),
            "labels": [int(v) for v in np.arange(per_batch) % 10],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)


def write_gtsrb(root: Path, classes: int = 43, n_test: int = 6) -> None:
    """GTSRB as torchvision reads it: one folder of .ppm images per class, and the test CSV."""
    base = root / "gtsrb"
    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        h, w = rng.integers(25, 50, size=2)
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)

    for c in range(classes):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        image(folder / f"00000_{c:05d}.ppm")
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True, exist_ok=True)
    with open(base / "GT-final_test.csv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i in range(n_test):
            image(test_dir / f"{i:05d}.ppm")
            writer.writerow([f"{i:05d}.ppm", 30, 30, 1, 1, 29, 29, i % classes])
