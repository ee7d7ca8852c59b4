"""Tiny datasets written in each dataset's real on-disk format, for the real torchvision loaders.

Every writer returns what it wrote, split by split, so that tests can compare the loaders'
tensors with the files' pixels and labels.
"""

from __future__ import annotations

import csv
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx_mnist(root: Path, folder: str = "MNIST", n_train: int = 20,
                    n_test: int = 10) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST / Fashion-MNIST: uncompressed idx files in ``<root>/<folder>/raw``.

    Returns {'train', 'test'}: (uint8 images [n, 28, 28], labels [n]).
    """
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)  # not sorted: order matters
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
        written[split] = (images, labels.astype(np.int64))
    return written


def write_cifar10(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10's python version: pickled batches in ``<root>/cifar-10-batches-py``.

    Each row of a batch's ``data`` is one image, channel planes R, G, B of 32x32 row-major.
    torchvision also checks the files' md5 sums, which fake files cannot match: tests patch
    ``torchvision.datasets.cifar.check_integrity``.
    Returns {'train', 'test'}: (uint8 images [n, 3, 32, 32], labels [n]); train is data_batch_1..5.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    rows: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        batch_labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": batch_labels}, fh)
        split = "test" if name == "test_batch" else "train"
        rows[split].append(data)
        labels[split] += batch_labels
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    return {split: (np.concatenate(rows[split]).reshape(-1, 3, 32, 32), np.array(labels[split]))
            for split in ("train", "test")}


def write_gtsrb(root: Path, classes: int = 43, n_test: int = 6) -> dict[str, list[tuple[np.ndarray, int]]]:
    """GTSRB as torchvision reads it: one folder of .ppm images per class, and the test CSV.

    Images have random sizes between 25 and 49 pixels (as GTSRB's do vary). Returns
    {'train', 'test'}: lists of (uint8 image [h, w, 3], label) in the order torchvision reads them.
    """
    base = root / "gtsrb"
    rng = np.random.default_rng(0)
    written: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}

    def image(path: Path) -> np.ndarray:
        h, w = rng.integers(25, 50, size=2)
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        return pixels

    for c in range(classes):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        written["train"].append((image(folder / f"00000_{c:05d}.ppm"), c))
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True, exist_ok=True)
    with open(base / "GT-final_test.csv", "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i in range(n_test):
            label = (7 * i + 3) % classes
            written["test"].append((image(test_dir / f"{i:05d}.ppm"), label))
            writer.writerow([f"{i:05d}.ppm", 30, 30, 1, 1, 29, 29, label])
    return written
