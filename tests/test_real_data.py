"""The real MNIST and Fashion-MNIST loaders on the official files that `make data` places.

`make test` runs `make data` first, so these run in CI; outside it they are skipped with the
command that provides the files.
"""

import os
from pathlib import Path

import pytest
import torch

from mmru.data import RobustDataModule

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MMRU_DATA_DIR", ROOT / "data"))

#: label counts of the official files (DESIGN.md, checked against the md5-verified files)
COUNTS = {
    "mnist": ([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
              [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
    "fmnist": ([6000] * 10, [1000] * 10),
}
FOLDER = {"mnist": "MNIST", "fmnist": "FashionMNIST"}


def _module(name: str, val_fraction: float = 0.0) -> RobustDataModule:
    if not (DATA / FOLDER[name] / "raw" / "t10k-labels-idx1-ubyte").is_file():
        pytest.skip(f"the official {name} files are not in {DATA}; `make data` places them")
    dm = RobustDataModule(name, str(DATA), (1, 28, 28), 10, batch_size=1000, val_fraction=val_fraction,
                          download=False)
    dm.setup()
    return dm


def _labels(subset) -> torch.Tensor:
    base = subset.dataset if hasattr(subset, "indices") else subset
    labels = torch.as_tensor(base.targets)
    return labels[list(subset.indices)] if hasattr(subset, "indices") else labels


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_official_files_load_with_their_counts_shapes_and_range(name):
    dm = _module(name)
    train_counts, test_counts = COUNTS[name]
    assert torch.bincount(_labels(dm.train_set), minlength=10).tolist() == train_counts
    assert torch.bincount(_labels(dm.test_set), minlength=10).tolist() == test_counts
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # raw pixels / 255, no normalisation
    # the first test images of the official files: MNIST starts 7, 2, 1, 0; F-MNIST 9, 2, 1, 1
    assert y[:4].tolist() == ([7, 2, 1, 0] if name == "mnist" else [9, 2, 1, 1])


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_validation_split_is_stratified_disjoint_and_seeded(name):
    dm = _module(name, val_fraction=0.1)
    train_counts, _ = COUNTS[name]
    val_counts = torch.bincount(_labels(dm.val_set), minlength=10).tolist()
    assert val_counts == [round(0.1 * n) for n in train_counts]
    fit_counts = torch.bincount(_labels(dm.train_set), minlength=10).tolist()
    assert [a + b for a, b in zip(fit_counts, val_counts)] == train_counts
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    again = _module(name, val_fraction=0.1)
    assert list(again.val_set.indices) == list(dm.val_set.indices)


@pytest.mark.slow
def test_a_1e_12_step_from_the_published_mnist_model_keeps_its_test_error(tmp_path):
    """train.py init_from=<the authors' MNIST .mat>, one MMR-Universal step at lr 1e-12 (the fine-tune
    config): the checkpoint's error on the full official test set is the published 3.04 %."""
    from mmru.training import compose_train_config, train

    _module("mnist")  # skips without the files
    mat = ROOT / "zoo" / "croce-hein-2020" / "mmr_univ_mnist.mat"
    cfg = compose_train_config(["experiment=finetune/mnist_universal", f"init_from={mat}", f"paths.data_dir={DATA}",
                                "datamodule.download=false", "logger=none", "lr=1e-12", "trainer.max_epochs=1",
                                "+trainer.limit_train_batches=1", "trainer.enable_progress_bar=false",
                                "trainer.enable_model_summary=false", "certify_after_training=false"], tmp_path)
    metrics = train(cfg)
    assert metrics["test/error"] == pytest.approx(0.0304, abs=1e-6)  # 304 of the 10000 test images (float32)
